#!/usr/bin/env bash
# Mutation testing (docs/testing.md): mutate one module with mutmut and run only the given test modules
# against each mutant. Slow, so not part of CI. Usage:
#   bash tools/mutation.sh tinystories/generation/sampling.py tests/generation/test_sampling.py [more test modules...]
# Works in a scratch copy of the working tree (MUTATION_DIR, default a new temporary folder), so the
# checkout is never touched; prints the score and the surviving mutants, and leaves the copy for
# `cd $MUTATION_DIR && mutmut show NAME`. MUTANTS="name ..." tries only those mutants (e.g. an earlier
# run's survivors, after the tests changed).
set -euo pipefail
module=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
work=${MUTATION_DIR:-$(mktemp -d -t mutation.XXXXXX)}
mkdir -p "$work"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work")
{
  echo "[mutmut]"
  echo "source_paths=tinystories"
  echo "only_mutate=$module"
  # The scripts and the network are imported or run by the tests; only $module is mutated.
  printf 'also_copy=\n    model\n'; for script in "$root"/*.py; do echo "    $(basename "$script")"; done
  # torch is not fork-safe once threads have started: fork each mutant's run from a clean server process.
  echo "process_isolation=forkserver"
  printf 'pytest_add_cli_args_test_selection=\n'; for tests in "$@"; do echo "    $tests"; done
} > "$work/setup.cfg"
cd "$work"
# One thread per test run: the mutants run one after another, and idle OpenMP threads only spin.
export OMP_NUM_THREADS=1
# shellcheck disable=SC2086  # MUTANTS is a list of names
nice -n 10 mutmut run --max-children "${MUTATION_JOBS:-1}" ${MUTANTS:-} > mutmut-run.log 2>&1 || { tail -30 mutmut-run.log; exit 1; }
mutmut results --all true > mutmut-results.txt
# A mutant that makes the tests time out (an endless loop) or kills their process by a signal (mutmut says
# "segfault", e.g. a signal handler not installed) is detected too.
detected=$(grep -cE ': (killed|timeout|segfault)$' mutmut-results.txt || true)
tried=$(grep -cE ': (killed|timeout|segfault|survived|suspicious)$' mutmut-results.txt || true)
echo "$module: $detected of $tried mutants detected ($(( tried ? 100 * detected / tried : 0 ))%); work folder $work"
grep -vE ': (killed|timeout|segfault)$' mutmut-results.txt || true
