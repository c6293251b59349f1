"""`dltune example [NAME [DEST]]`: list the example experiments that ship with dltune, or copy one out."""

from __future__ import annotations

import argparse

from dltune.cli.common import add_json_arg, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("example", help="list the example experiments that ship with dltune, or copy one out",
                       description="Without NAME: list the example experiments that ship with dltune. With NAME: "
                                   "copy that example to DEST, to run and edit. A file or folder already at DEST is "
                                   "never overwritten (exit 2).")
    p.add_argument("name", metavar="NAME", nargs="?", help="the example to copy (dltune example lists them)")
    p.add_argument("dest", metavar="DEST", nargs="?",
                   help="where to copy it (default: ./NAME.toml, or ./NAME/ for an example folder; into DEST when "
                        "it is a folder, or ends in /)")
    add_json_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dltune.experiment.examples import copy_example, examples

    if args.name is None:
        if args.json:
            print_json([{"name": e.name, "folder": e.folder, "summary": e.summary} for e in examples()])
            return 0
        listed = [(f"{e.name}/" if e.folder else e.name, e.summary) for e in examples()]
        width = max(len(name) for name, _ in listed)
        for name, summary in listed:
            print(f"{name:<{width}}  {summary}")
        print("\ncopy one: dltune example NAME [DEST]")
        return 0
    path = copy_example(args.name, args.dest)
    if args.json:
        print_json({"example": args.name, "path": str(path)})
    else:
        print(f"copied to {path}{'/' if path.is_dir() else ''}")
    return 0
