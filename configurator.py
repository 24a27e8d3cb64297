"""Command-line options for every script, nanoGPT style, their declared checks, and the one way scripts stop.

  python train.py config/train_smoke.py --batch_size=32 --compile=False
  python train.py --help

A script defines its options as plain module globals, then calls

  from configurator import configure
  config = configure(globals(), checks={"batch_size": "[1, inf)", "optimizer": ("muon", "adamw")})

so the options stay globals a user can read and edit. A config file is Python that assigns some of them;
--key=value is parsed with literal_eval. Every value must keep its default's type (an int may stand for a
float); for a string default the text is taken as written. `checks` declares an option's range (an interval:
[ ] includes a bound, ( ) excludes it) or its choices (a tuple); --help shows them beside the options.

A mistake ends the run with one line on stderr and exit status 1, never a traceback: fail(message) for the
checks a script writes itself, and any UserError a script lets through (configure installs the hook).
"""

import ast
import difflib
import io
import math
import os
import re
import sys
import tokenize
import traceback

PLAIN_TYPES = (int, float, bool, str, type(None))
INTERVAL = re.compile(r"^([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])$")
# The sampling options of sample.py, eval.py and serve.py: the seeds' recommended settings (an export's
# generation_config.json carries them too), and their ranges. A seed is one torch and numpy accept.
SAMPLING = {"temperature": 0.7, "top_k": 0, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 256}
SAMPLING_CHECKS = {
    "temperature": "[0, 100]",
    "top_k": "[0, inf)",
    "top_p": "(0, 1]",
    "repetition_penalty": "[0.1, 10]",
    # a story of 100,000 tokens takes minutes even compiled; Ctrl-C stops one
    "max_new_tokens": "[1, 100_000]",
    "seed": "[0, 2**63)",
}


class UserError(Exception):
    """A mistake in what the user gave (an option, a file): the script ends with its message on one line."""


def fail(message):
    """Ends the run with one line on stderr and exit status 1: no traceback for a user's mistake."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def print_user_errors(kind, error, tb, default_hook=sys.excepthook):
    """sys.excepthook: a UserError or running out of memory is one line, Ctrl-C one word; anything else (a
    bug) keeps its traceback."""
    if issubclass(kind, UserError):
        print(f"error: {error}", file=sys.stderr)
    elif (
        issubclass(kind, MemoryError)
        or kind.__name__ == "OutOfMemoryError"
        or "can't allocate memory" in str(error)
    ):
        what = " ".join(str(error).split())[:160]
        print(
            f"error: out of memory ({what}); use a smaller batch (--batch_size, --num_samples)",
            file=sys.stderr,
        )
    elif issubclass(kind, KeyboardInterrupt):
        print("\ninterrupted", file=sys.stderr)
    else:
        default_hook(kind, error, tb)


def configure(namespace, argv=None, checks=None):
    """Applies config files and --key=value arguments (default: sys.argv[1:]) to the namespace's options, then
    checks each against `checks` ({option: interval text or tuple of choices}).

    Options are the lowercase globals of plain types (UPPER_CASE names are constants). Writes the final values
    back into the namespace and returns them as {option: value}.
    """
    sys.excepthook = print_user_errors
    argv = sys.argv[1:] if argv is None else argv
    checks = checks or {}
    defaults = {
        key: value
        for key, value in namespace.items()
        if not key.startswith("_") and not key.isupper() and isinstance(value, PLAIN_TYPES)
    }
    unknown = set(checks) - set(defaults)
    assert not unknown, f"checks for options that do not exist: {unknown}"  # the script's own mistake
    if "--help" in argv or "-h" in argv:
        print_help(namespace, defaults, checks)
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
    for key, check in checks.items():
        problem = check_value(values[key], check)
        if problem:
            fail(f"--{key}={values[key]}{problem}")
    namespace.update(values)
    return values


def check_value(value, check):
    """What is wrong with value under check (an interval text or a tuple of choices), said after the option's
    --key=value; None when nothing is."""
    if isinstance(check, tuple):  # by type too: 1 is not True
        chosen = any(type(value) is type(choice) and value == choice for choice in check)
        return None if chosen else f": use {' or '.join(repr(c) if c == '' else str(c) for c in check)}"
    if value is None:
        return None
    low_bracket, low, high, high_bracket = INTERVAL.match(check).groups()
    low, high = (eval(bound, {"inf": math.inf}) for bound in (low, high))  # our own texts, like "2**63"
    above = value >= low if low_bracket == "[" else value > low
    below = value <= high if high_bracket == "]" else value < high
    return None if above and below else f" must be {describe(check)}"  # NaN fails both


def describe(check):
    """An interval in words where that reads better: '[1, inf)' is 'at least 1'."""
    if isinstance(check, tuple):
        return "one of " + ", ".join(map(str, check))
    low_bracket, low, high, high_bracket = INTERVAL.match(check).groups()
    if high == "inf":
        return f"at least {low}" if low_bracket == "[" else f"above {low}"
    return f"in {check}"


def run_config_file(path):
    """The globals a config file assigns; any mistake in it ends the run with one line naming the file."""
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "not found"
        fail(f"config file '{path}' {what} (options are written --key=value)")
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


def print_help(namespace, defaults, checks):
    """The script's docstring, then each option with its default, the comment beside it in the source and its
    declared range or choices."""
    if namespace.get("__doc__"):
        print(namespace["__doc__"].strip() + "\n")
    comments = option_comments(namespace.get("__file__"))
    shown = {key: value if isinstance(value, str) else repr(value) for key, value in defaults.items()}
    flags = {key: f"--{key}={value}" for key, value in shown.items()}
    width = max(map(len, flags.values()), default=0)
    print("options:")
    for key, flag in flags.items():
        rule = f" ({describe(checks[key])})" if key in checks else ""
        print(f"  {flag:<{width}}   {comments.get(key, '')}{rule}".rstrip())


def option_comments(path):
    """{name: comment} for the script's top-level `name = ...  # comment` lines (a name's first one)."""
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
