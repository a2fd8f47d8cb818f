"""python -m tinyimagenet.watch [--json FILE] [--num-classes C] [--no-diagnose] SCRIPT.py [ARGS...]

Runs SCRIPT.py as `python SCRIPT.py ARGS...` would (as __main__, its own sys.argv, its folder first
on sys.path), under the watcher; prints the report afterwards, also after Ctrl-C or an exception in
the script, and exits with the script's status. A stalled run with no loop fault goes to the
diagnosis's experiments with the captured pieces, unless --no-diagnose.
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import tempfile
import traceback

from .session import watch


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m tinyimagenet.watch", description=__doc__.split("\n\n")[1])
    p.add_argument("--json", metavar="FILE", help="write the report as JSON (quick_diagnosis's shape)")
    p.add_argument("--num-classes", type=int, metavar="C", help="classes (default: the model's output width)")
    p.add_argument("--no-diagnose", action="store_true", help="only observe: no experiments after a stalled run")
    p.add_argument("script", help="the training script, run unchanged")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    opts = p.parse_args(argv)
    if not os.path.isfile(opts.script):
        p.exit(2, f"error: script {opts.script} not found: give the path of your training script\n")
    if opts.num_classes is not None and opts.num_classes < 2:
        p.exit(2, "error: --num-classes must be at least 2\n")
    return opts


def _write_json(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def main(argv=None) -> int:
    opts = _parse(sys.argv[1:] if argv is None else argv)
    script = os.path.abspath(opts.script)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [opts.script] + list(opts.args)
    sys.path[0:1] = [os.path.dirname(script)]  # as `python SCRIPT.py` sets it
    status = 0
    w = watch(num_classes=opts.num_classes, capture=not opts.no_diagnose)
    try:
        with w:
            runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        print("\nwatch: interrupted (Ctrl-C); the report covers what ran", file=sys.stderr)
        status = 130
    except BaseException:
        traceback.print_exc()
        print("watch: the script raised; the report covers what ran", file=sys.stderr)
        status = 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    print("\n" + w.report(), flush=True)
    result = w.to_json()
    if not opts.no_diagnose:
        name, m = next(iter(result["models"].items()))
        if m["learning"] == "stalled" and not m["causes"]:
            print(f"\nwatch: handing over to diagnose(): {(w.captured() or {}).get('describe', 'nothing captured')}",
                  flush=True)
            from ..diagnosis import format_model, to_json
            found = w.diagnose(progress=True)
            if found is not None:
                print("\n".join(format_model(name, found)))
                result["models"][name] = to_json(found)
    if opts.json:
        _write_json(opts.json, result)
    return status


if __name__ == "__main__":
    sys.exit(main())
