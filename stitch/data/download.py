"""Downloads the user asked for (``data.download=true``): a failure is one line saying what could not
be fetched, from where, and where to put the files by hand (:class:`~stitch.errors.DownloadError`,
exit 1), never a ``URLError`` traceback or a request to install a package."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..errors import DownloadError

# where torchvision fetches each set from (for the message: the user may fetch them by other means)
SOURCES = {
    "CIFAR-10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "SVHN": "http://ufldl.stanford.edu/housenumbers/ (train_32x32.mat, test_32x32.mat)",
    "CelebA": "Google Drive (torchvision's CelebA; needs the gdown package) or "
              "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
}


@contextlib.contextmanager
def fetching(name: str, root: Path, by_hand: str) -> Iterator[None]:
    """Turn a failed download of data set ``name`` into ``root`` into one :class:`DownloadError` line;
    ``by_hand`` says which files to put there instead."""
    try:
        yield
    except DownloadError:
        raise
    except ImportError as e:  # torchvision's CelebA download needs gdown
        raise DownloadError(f"cannot download {name}: the {e.name or 'needed'} package is not installed; put "
                            f"{by_hand} under {Path(root).resolve()} by hand (from {SOURCES.get(name, '?')})") from None
    except (OSError, RuntimeError) as e:  # URLError is an OSError; torchvision raises RuntimeError on bad checksums
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"could not download {name} from {SOURCES.get(name, 'its source')} into "
                            f"{Path(root).resolve()} ({reason}); with no network, put {by_hand} there by hand "
                            f"and run without data.download=true") from None
