"""The page template `dvc plots show` fills (`.dvc/config`: plots.html_template), with Vega,
Vega-Lite and vega-embed inlined from the npm packages the set-up installs, so the page draws
offline; DVC's own template loads them from a CDN. Charts render as SVG.

    python -m mnistflow.plotpage NODE_MODULES OUT_HTML
"""
from __future__ import annotations

import sys
from pathlib import Path

from mnistflow.io import write_bytes

SCRIPTS = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js")


def page(node_modules: Path) -> str:
    scripts = "\n".join(f"<script>{(node_modules / s).read_text()}</script>" for s in SCRIPTS)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>DVC plots</title>
{scripts}
<script>
const embed = window.vegaEmbed;  // DVC's page calls vegaEmbed(el, spec): draw SVG, no menu
window.vegaEmbed = (el, spec, opts) => embed(el, spec, {{renderer: "svg", actions: false, ...opts}});
</script>
<style>body {{ font-family: sans-serif; }} body > div {{ display: inline-block; margin: 1em; }}</style>
</head><body>
{{plot_divs}}
</body></html>
"""


if __name__ == "__main__":
    node_modules, out = map(Path, sys.argv[1:])
    write_bytes(out, page(node_modules).encode())
