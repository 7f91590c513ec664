"""What the trainer reports about the run's resources."""
import re

from albef_plugin.trainers.trainer import peak_rss_text


def test_peak_rss_is_reported_in_mib():
    text = peak_rss_text()
    own = int(re.match(r"(\d+) MiB \(this process\)", text).group(1))
    assert own > 50  # torch alone is larger than this
    assert re.search(r"\d+ MiB \(largest finished worker process\)", text)
