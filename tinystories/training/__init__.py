"""Training: from token files to checkpoints.

    config.TrainConfig             every training setting (train.py's flags), the schedule and the optimizer
    trainer.Trainer / train(...)   the loop: get batch, forward, backward, clip, step, schedule, evaluate, save
    run_state                      what a restart carries (generators, data position, counters) and its checkpoint
    resume_checks                  a checkpoint checked before a run resumes from it
    stop_signals.StopRequest       SIGTERM / Ctrl-C: stop after this step and save
    distributed                    torchrun's process group; rank 0 first where files are written
    folder_lock, run_log, progress one writer per out_dir; the JSON log and loss curve; what the run prints
"""
