"""Progress lines: worker counters on disk, summed and formatted by the launcher."""

from transforms.progress import ProgressCounter, format_duration, format_progress, read_done


def test_counters_of_several_workers_add_up(tmp_path):
    first, second = (
        ProgressCounter(str(tmp_path), interval_secs=0),
        ProgressCounter(str(tmp_path), interval_secs=0),
    )
    first.add(32)
    second.add(32)
    first.add(5)
    assert read_done(str(tmp_path)) == 69


def test_counter_writes_only_after_interval(tmp_path):
    counter = ProgressCounter(str(tmp_path), interval_secs=3600)
    counter.add(4)
    counter.add(4)
    # The first add writes at once; the second waits for the interval.
    assert read_done(str(tmp_path)) == 4
    counter.write()
    assert read_done(str(tmp_path)) == 8


def test_progress_line_gives_time_left():
    line = format_progress(done=100, total=400, rate=10.0)
    assert line == "Progress: 100 of 400 images (25%), 10.0 images/s, about 30 s left"


def test_progress_line_without_total():
    assert format_progress(done=7, total=None, rate=0.5) == "Progress: 7 images, 0.5 images/s"


def test_duration_formats():
    assert format_duration(59) == "59 s"
    assert format_duration(61) == "1 min 01 s"
    assert format_duration(3 * 3600 + 120) == "3 h 02 min"
