"""Progress bars for long work: tqdm on a terminal, nothing when stderr is a file or a pipe (so
that logs and error output stay clean), and nothing when the caller asks for quiet."""


def progress(iterable, desc, unit, enabled=True, total=None):
    """``iterable`` wrapped in a transient tqdm bar on an interactive stderr."""
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, unit=unit, total=total, leave=False, disable=None)
