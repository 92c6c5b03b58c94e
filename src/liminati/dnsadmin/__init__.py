"""The DNS admin page (port 5380): a standalone, stdlib-only web app in `app.py`.

`app.py` runs alone in its own container with nothing but that file mounted, so it must never
import anything from liminati; liminati only renders its config and ships the file.
"""
