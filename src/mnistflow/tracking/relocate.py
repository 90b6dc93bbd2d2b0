"""The one place that edits MLflow's store behind its back: MLflow keeps artifact locations
absolute and has no API to move them, so a store copied or moved with its repo is repointed by
SQL on the columns listed here (tests/test_tracking.py fails loudly when MLflow's schema no longer
has them)."""
from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

# (table, column) of every absolute artifact location in MLflow's sqlite schema
LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
             ("logged_models", "artifact_location"), ("model_versions", "storage_location"))


def relocate_store(db: Path) -> int:
    """A store copied or moved with its repo still names the old folder in every artifact
    location (MLflow keeps them absolute). Point those at this folder; say so. Returns the
    number of locations changed."""
    if not db.exists():
        return 0
    here = str(db.parent)
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        if "experiments" not in tables:
            return 0
        old_roots = set()
        for (location,) in con.execute("select artifact_location from experiments"):
            path = (location or "").removeprefix("file://")
            if path.endswith("/artifacts") and Path(path).parent.name == "mlruns" and \
                    str(Path(path).parent) != here:
                old_roots.add(str(Path(path).parent))
        changed = 0
        for old in old_roots:
            moved = sum(con.execute(f"update {table} set {column} = replace({column}, ?, ?) where {column} like ?",
                                    (old + "/", here + "/", f"%{old}/%")).rowcount
                        for table, column in LOCATIONS if table in tables)
            log.warning("the MLflow store %s was moved here from %s: %d artifact locations now point here",
                        db.parent, old, moved)
            changed += moved
    return changed
