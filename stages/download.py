"""DVC stage download: the raw files of data.dataset into OUT_DIR, verified; for dataset folder,
your images (data.path) copied in."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # also in DVC's temp exp copies

from mnistflow.core.config import load_config  # noqa: E402
from mnistflow.data import folder  # noqa: E402
from mnistflow.data.datasets import DATASETS  # noqa: E402
from mnistflow.data.download import fetch  # noqa: E402
from mnistflow.data.sources import resolve  # noqa: E402
from mnistflow.core.errors import run_stage  # noqa: E402
from mnistflow.core.io import repo_root  # noqa: E402


def main() -> None:
    (out_dir,) = sys.argv[1:]
    cfg = load_config()
    if cfg.data.dataset == "folder":  # your images, copied in: DVC caches what was trained on
        folder.copy(folder.scan(resolve(cfg.data.path, repo_root())), Path(out_dir))
        return
    mirror = cfg.data.mirror and str(resolve(cfg.data.mirror, repo_root()))
    fetch(DATASETS[cfg.data.dataset], mirror, Path(out_dir), checksums=cfg.data.verify)


if __name__ == "__main__":
    run_stage(main)
