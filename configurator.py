"""Command-line options for every script, nanoGPT style, and the one way scripts stop on bad input.

  python train.py config/train_smoke.py --batch_size=32 --compile=False
  python train.py --help

A script defines its options as plain module globals, then calls

  from configurator import configure, fail
  config = configure(globals())

so the options stay globals a user can read and edit. A config file is Python that assigns some of them;
--key=value is parsed with literal_eval. Every value must keep its default's type (an int may stand for a
float); for a string default the text is taken as written. Mistakes end the run with one line.
"""

import ast
import difflib
import io
import os
import sys
import tokenize
import traceback

PLAIN_TYPES = (int, float, bool, str, type(None))


def fail(message):
    """Ends the run with one line on stderr and exit status 1: no traceback for a user's mistake."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def configure(namespace, argv=None):
    """Applies config files and --key=value arguments (default: sys.argv[1:]) to the namespace's options.

    Options are the lowercase globals of plain types (UPPER_CASE names are constants). Writes the final
    values back into the namespace and returns them as {option: value}.
    """
    argv = sys.argv[1:] if argv is None else argv
    defaults = {
        key: value
        for key, value in namespace.items()
        if not key.startswith("_") and not key.isupper() and isinstance(value, PLAIN_TYPES)
    }
    if "--help" in argv or "-h" in argv:
        print_help(namespace, defaults)
        sys.exit(0)
    values = dict(defaults)

    def set_option(key, value, shown):
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join('--' + k for k in close)}?" if close else ""
            fail(f"unknown key '{key}'.{hint} Known keys: {', '.join(sorted(defaults))}")
        default = defaults[key]
        if isinstance(default, float) and type(value) is int:
            value = float(value)
        if default is not None and type(value) is not type(default):
            fail(
                f"{shown} is a {type(value).__name__}, but {key} takes a {type(default).__name__} "
                f"(default {default!r})"
            )
        values[key] = value

    for arg in argv:
        if not arg.startswith("--"):
            for key, value in run_config_file(arg).items():
                if not key.startswith("_") and not isinstance(value, type(sys)):  # skip `import math`
                    set_option(key, value, f"{key} = {value!r} in {arg}")
        elif "=" not in arg:
            fail(f"'{arg}' has no value: write it as --key=value")
        else:
            key, text = arg[2:].split("=", 1)
            if isinstance(defaults.get(key), str):
                value = text
            else:
                try:
                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    value = text
            set_option(key, value, f"--{arg[2:]}")
    namespace.update(values)
    return values


def run_config_file(path):
    """The globals a config file assigns; any mistake in it ends the run with one line naming the file."""
    if not os.path.isfile(path):
        fail(f"config file '{path}' not found (options are written --key=value)")
    assigned = {}
    try:
        with open(path, encoding="utf-8") as f:
            code = compile(f.read(), path, "exec")
        exec(code, assigned)
    except SyntaxError as e:
        fail(f"config file '{path}' line {e.lineno}: {e.msg}")
    except Exception as e:  # a NameError, a failed import: the user's file, so no traceback
        lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if frame.filename == path]
        where = f" line {lines[-1]}" if lines else ""
        fail(f"config file '{path}'{where}: {type(e).__name__}: {e}")
    return assigned


def print_help(namespace, defaults):
    """The script's docstring, then each option with its default and the comment beside it in the source."""
    if namespace.get("__doc__"):
        print(namespace["__doc__"].strip() + "\n")
    comments = option_comments(namespace.get("__file__"))
    flags = {
        key: f"--{key}={value if isinstance(value, str) else repr(value)}" for key, value in defaults.items()
    }
    width = max(map(len, flags.values()), default=0)
    print("options:")
    for key, flag in flags.items():
        print(f"  {flag:<{width}}   {comments.get(key, '')}".rstrip())


def option_comments(path):
    """{name: comment} for the script's top-level `name = ...  # comment` lines (a name's first assignment)."""
    if not path or not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        source = f.read()
    comment_on_line = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    comments = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    comments.setdefault(target.id, comment_on_line.get(node.lineno, ""))
    return comments
