"""The page template `dvc plots show` fills (`.dvc/config`: plots.html_template), with Vega,
Vega-Lite and vega-embed inlined from the npm packages the set-up installs, so the page draws
offline; DVC's own template loads them from a CDN. Charts render as SVG.

    python -m mnistflow.tools.plotpage NODE_MODULES OUT_HTML
"""
from __future__ import annotations

from pathlib import Path

from mnistflow.core.io import write_bytes

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


def main(argv: list[str] | None = None) -> None:
    from mnistflow.cli import Parser

    parser = Parser(prog="python -m mnistflow.tools.plotpage", description=__doc__.splitlines()[0])
    parser.add_argument("node_modules", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    write_bytes(args.out, page(args.node_modules).encode())


if __name__ == "__main__":
    from mnistflow.core.errors import run_stage

    run_stage(main)
