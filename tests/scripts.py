"""A root script run in the test's own process, as `python SCRIPT.py ARGS` would run it: its main() under
run_main with sys.argv set. Cheaper than a child process (no second import of torch) where the process itself
is not what is tested."""
import sys
from pathlib import Path
from types import ModuleType


def run_script(monkeypatch, capsys, script: ModuleType, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `script` (generate, train, ...: the imported module) given `args`."""
    monkeypatch.setattr(sys, "argv", [Path(script.__file__).name, *args])
    status = 0
    try:
        script.run_main(script.main)
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def refusal(monkeypatch, capsys, script: ModuleType, *args: str) -> str:
    """The one `error:` line with which `script` refuses `args` (exit status 2 and nothing else on stderr)."""
    status, _, stderr = run_script(monkeypatch, capsys, script, *args)
    assert status == 2 and len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: "), stderr
    return stderr
