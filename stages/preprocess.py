"""DVC stage preprocess: RAW_DIR -> train/val/test tensors, stats and crop variants in OUT_DIR."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # also in DVC's temp exp copies

from mnistflow.core.config import load_config  # noqa: E402
from mnistflow.core.errors import run_stage  # noqa: E402
from mnistflow.core.numerics import pin  # noqa: E402


def main() -> None:
    raw_dir, out_dir = sys.argv[1:]
    cfg = load_config()
    pin(cfg.numerics.mode, cfg.numerics.threads)  # before torch loads: it reads the pins once
    from mnistflow.data.preprocess import preprocess

    preprocess(Path(raw_dir), cfg.data, cfg.seed, cfg.preprocess.variants, Path(out_dir), cfg.numerics.threads)


if __name__ == "__main__":
    run_stage(main)
