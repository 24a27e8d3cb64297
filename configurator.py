# Overrides a script's module globals from the command line, nanoGPT style:
#   python train.py config/train_smoke.py --batch_size=32 --compile=False
# Each script runs `exec(open("configurator.py").read())` after defining its defaults, so the keys
# stay plain globals a user can read and edit. A config file is Python that assigns some of them;
# --key=value is parsed with literal_eval. Every value must keep its default's type (an int may stand
# for a float); for a string default the text is taken as written. Mistakes end the run with one line.
import difflib
import os
import sys
from ast import literal_eval


def _config_fail(message):
    sys.exit(f"error: {message}")


def _config_set(key, value, shown):
    if key not in _config_known:
        close = difflib.get_close_matches(key, _config_known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join('--' + k for k in close)}?" if close else ""
        _config_fail(f"unknown key '{key}'.{hint} Known keys: {', '.join(sorted(_config_known))}")
    default = globals()[key]
    if isinstance(default, float) and type(value) is int:
        value = float(value)
    if default is not None and type(value) is not type(default):
        _config_fail(f"{shown} is a {type(value).__name__}, but {key} takes a {type(default).__name__} "
                     f"(default {default!r})")
    globals()[key] = value


# options are the script's lowercase globals of plain types; UPPER_CASE names are its constants
_config_known = [k for k, v in globals().items()
                 if not k.startswith("_") and not k.isupper() and isinstance(v, (int, float, bool, str, type(None)))]
for _arg in sys.argv[1:]:
    if not _arg.startswith("--"):
        if not os.path.isfile(_arg):
            _config_fail(f"config file '{_arg}' not found (options are written --key=value)")
        _config_file_globals = {}
        exec(open(_arg).read(), _config_file_globals)
        for _key, _value in _config_file_globals.items():
            if not _key.startswith("_") and not isinstance(_value, type(sys)):  # skip `import math`
                _config_set(_key, _value, f"{_key} = {_value!r} in {_arg}")
    elif "=" not in _arg:
        _config_fail(f"'{_arg}' has no value: write it as --key=value")
    else:
        _key, _text = _arg[2:].split("=", 1)
        if isinstance(globals().get(_key), str):
            _value = _text
        else:
            try:
                _value = literal_eval(_text)
            except (ValueError, SyntaxError):
                _value = _text
        _config_set(_key, _value, f"--{_arg[2:]}")
