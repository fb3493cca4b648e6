"""Progress of the long pretraining loops: `epoch i/N`, elapsed and time left, reported at every epoch's end and,
within an epoch, every interval (so the first line of a minutes-long epoch comes seconds after the start)."""

from __future__ import annotations

import dataclasses

from backbone_toys import coloured_squares
from models.backbones.tiny_diffusion import DiffusionPretrainConfig, pretrain_diffusion
from models.backbones.training_support import ProgressReport, TrainingProgress, format_duration


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_durations_read_as_seconds_minutes_and_hours():
    assert [format_duration(s) for s in (0, 45.4, 125, 3 * 3600 + 5 * 60 + 59)] == ["0s", "45s", "2m05s", "3h05m"]


def test_progress_is_reported_within_an_epoch_and_at_its_end_with_the_time_left():
    clock, reports = FakeClock(), []
    progress = TrainingProgress(epochs=4, steps_per_epoch=10, report=reports.append, interval_seconds=30,
                                clock=clock)
    for step in range(10):  # 10 s per step: a line after 30 s, 60 s, 90 s, then the epoch's own
        clock.now += 10
        progress.after_step(1, loss=2.0 + step)
    progress.after_epoch(1, epoch_loss=6.5)
    assert [(r.epoch, r.step, r.epoch_done) for r in reports] == [(1, 3, False), (1, 6, False), (1, 9, False),
                                                                  (1, 10, True)]
    first, last = reports[0], reports[-1]
    assert first.loss == (2.0 + 3.0 + 4.0) / 3  # the mean so far in the epoch
    assert first.remaining_seconds == 30 / 3 * 37  # 10 s per step, 37 of 40 steps to go
    assert first.line("tiny-clip") == ("tiny-clip epoch 1/4, step 3/40: loss 3.0000 so far, 30s elapsed, "
                                       "about 6m10s left")
    assert last.line("tiny-clip") == "tiny-clip epoch 1/4: loss 6.5000, 1m40s elapsed, about 5m00s left"


def test_no_step_means_no_estimate():
    report = ProgressReport(epoch=1, epochs=2, step=0, total_steps=8, loss=1.0, elapsed_seconds=3.0,
                            epoch_done=False)
    assert report.remaining_seconds is None and report.line("m").endswith("time left unknown")


def test_pretraining_reports_every_epoch_as_i_of_n(tmp_path):
    config = DiffusionPretrainConfig(sample_size=16, block_out_channels=(8, 16),
                                     down_block_types=("DownBlock2D", "DownBlock2D"),
                                     up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, epochs=2,
                                     batch_size=16, warmup_steps=1, num_train_timesteps=50, num_threads=1)
    images, _, _ = coloured_squares(32, seed=0, size=16)
    reports: list[ProgressReport] = []
    result = pretrain_diffusion(images, tmp_path / "model", dataclasses.replace(config), on_progress=reports.append)
    at_epoch_end = [r for r in reports if r.epoch_done]
    assert [(r.epoch, r.epochs, r.step, r.total_steps) for r in at_epoch_end] == [(1, 2, 2, 4), (2, 2, 4, 4)]
    assert [r.loss for r in at_epoch_end] == result.epoch_losses
    assert at_epoch_end[-1].remaining_seconds == 0
