"""Progress off a terminal: log lines at a steady cadence with count, ETA and the bar's postfix."""

from __future__ import annotations

import re
import subprocess
import sys

from monai_distill.progress import LogProgress, progress_bar

from ..bundles.helpers import FAST, REPO_ROOT, bundle_cmd


def test_log_progress_every_tenth_and_at_the_end(log_lines):
    bar = LogProgress(total=100, desc="experts", unit="epoch", every=3600)
    for i in range(100):
        bar.update(1)
        bar.set_postfix(loss=1.0 / (i + 1))
    bar.close()
    lines = log_lines
    # the start, then one line per 10 % (the postfix is set after each update)
    assert 10 <= len(lines) <= 12, lines
    assert lines[-1].startswith("experts: 100/100 epoch (100%)")
    assert "ETA" in lines[5] and "loss=" in lines[5]


def test_time_cadence_without_a_total(log_lines):
    bar = LogProgress(desc="bags", every=0)  # no total: the start, then every update at a zero interval
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert [line.split(",")[0] for line in log_lines] == ["bags: 0", "bags: 1", "bags: 2", "bags: 3"]


def test_disabled_bar_is_silent(log_lines):
    for _ in progress_bar(range(5), desc="quiet", enabled=False):
        pass
    assert not log_lines


def test_off_a_terminal_progress_bar_logs(log_lines):
    # pytest captures stderr, so stderr is not a terminal here
    for _ in progress_bar(range(4), desc="slides"):
        pass
    assert log_lines[-1].startswith("slides: 4/4 (100%)")


def test_bundle_with_stderr_to_a_file_logs_every_long_step(medmnist_dir, tmp_path):
    """A batch job: stderr is a file. Distillation, the selection network and evaluation each log lines."""
    log = tmp_path / "run.log"
    fast = {**FAST, "progress": True}
    cmd = bundle_cmd("bundles/medmnist2d_distillation/configs/train.json", dataset="breastmnist",
                     dataset_dir=medmnist_dir, method="dm", ipc=2, output_dir=tmp_path / "out",
                     method_options="{'iterations': 5}", **fast)
    with open(log, "w") as err:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=err, timeout=600,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "torch threads: 1 (OMP_NUM_THREADS)" in text
    assert re.search(r"dm: 5/5 \(100%\), \d\d:\d\d elapsed, ETA \d\d:\d\d, match=", text), text[-3000:]
    assert re.search(r"evaluate convnet \(1 nets x 10 epochs\): 10/10 \(100%\)", text), text[-3000:]
    assert re.search(r"dm: 1/5 \(20%\)", text)  # intermediate lines, not only the end
    assert "\r" not in text  # no tqdm bar redraws in a log file


def test_progress_lines_in_the_log_do_not_depend_on_python_logging_config(tmp_path):
    """Without any logging configuration (plain Python API), the lines still reach stderr."""
    code = ("from monai_distill.progress import progress_bar\n"
            "for _ in progress_bar(range(3), desc='experts'): pass\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "experts: 3/3 (100%)" in proc.stderr
