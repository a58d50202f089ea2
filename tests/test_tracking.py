"""The run's CSV logger across resumes, without training: Lightning's own CSV writer underneath."""

import pandas as pd

from vae_dynamics.training.tracking import RunCSVLogger
from vae_dynamics.viz.curves import METRICS_ASIDE, read_metrics


def _first_start(run_dir):
    """A start that logged steps 0-3 (epoch 0: steps 0-1, epoch 1: steps 2-3) and then stopped."""
    logger = RunCSVLogger(run_dir)
    for step in range(4):
        logger.log_metrics({"train_step/loss": 10.0 - step, "epoch": step // 2}, step=step)
        if step == 1:
            logger.log_metrics({"val/loss": 5.0, "epoch": 0}, step=1)
    logger.save()
    return run_dir / "logs" / "version_0"


def test_a_resume_writes_the_earlier_rows_back_without_the_steps_it_logs_again(tmp_path):
    folder = _first_start(tmp_path)
    resumed = RunCSVLogger(tmp_path)  # resumed from the checkpoint at step 2 (end of epoch 0)
    assert not (folder / "metrics.csv").exists() and (folder / METRICS_ASIDE).is_file()
    resumed.log_metrics({"train_step/loss": 7.5, "epoch": 1}, step=2)
    resumed.log_metrics({"train_step/loss": 6.5, "epoch": 1}, step=3)
    resumed.save()
    rows = pd.read_csv(folder / "metrics.csv")
    assert rows["step"].tolist() == [0, 1, 1, 2, 3]  # steps 2 and 3 of the stopped start: once, the new ones
    assert rows["train_step/loss"].tolist()[3:] == [7.5, 6.5] and rows["val/loss"].notna().sum() == 1
    assert rows["epoch"].dtype.kind == "i"  # written back as logged (0, not 0.0)
    assert not (folder / METRICS_ASIDE).exists() and [p.name for p in (tmp_path / "logs").iterdir()] == [
        "version_0"
    ]


def test_a_resume_stopped_before_its_first_step_loses_nothing(tmp_path):
    folder = _first_start(tmp_path)
    RunCSVLogger(tmp_path)  # set the rows aside, then stopped before logging
    curves = read_metrics(tmp_path / "logs")  # the loss curves read the rows set aside
    assert curves["epoch"].tolist() == [0, 1] and curves["val/loss"].tolist()[0] == 5.0
    again = RunCSVLogger(tmp_path)
    again.log_metrics({"train_step/loss": 1.0, "epoch": 2}, step=4)
    again.save()
    assert pd.read_csv(folder / "metrics.csv")["step"].tolist() == [0, 1, 1, 2, 3, 4]
