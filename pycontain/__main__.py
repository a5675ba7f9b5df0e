"""python -m pycontain: the ``pycontain`` command (see pycontain/_cli.py).

python -m pycontain                                  # the demo, over the host's /
python -m pycontain run --layer /srv/rootfs -- sh -c 'echo $$'
python -m pycontain doctor
"""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m pycontain"))
