"""``ann2snn report``: evaluate a spiking model and write plots plus a markdown / HTML page."""

from __future__ import annotations

import argparse

from .evaluate import add_eval_options, add_output_group, describe, evaluate_from_args

HELP = "evaluate a spiking model and write PNG plots and a report page (report.md, report.html)"
EPILOG = """example:
  ann2snn report snn.pt --data digits --out runs/report
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help=HELP, description=HELP, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_options(p)
    output = add_output_group(p)
    output.add_argument("--out", required=True, metavar="DIR", help="folder for the plots and the page (created)")
    output.add_argument("--no-html", action="store_true", help="write report.md only")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import distributed as D
    from ..report import write_report

    snn, result, out_dir = evaluate_from_args(args, args.out)
    if not D.is_main():  # under torchrun: rank 0 writes the report
        return 0
    page = write_report(out_dir, result, snn, html_page=not args.no_html)
    print(describe(snn, result, args.snn))
    print(result.to_text())
    written = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    print(f"\nreport: {page} ({', '.join(written)})")
    return 0
