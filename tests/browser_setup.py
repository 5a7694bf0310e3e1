"""Make sure Debian's Chromium is installed for the browser tests (`make test` runs this first).

Installs it with apt-get when /usr/bin/chromium is missing and we are root; otherwise says
why the browser tests will be skipped. Never downloads a browser build of its own.
"""

import os
import shutil
import subprocess
import sys

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    if os.path.exists(CHROMIUM):
        return 0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"browser tests will be skipped: {CHROMIUM} is missing and apt-get cannot run here")
        return 0
    print("installing Debian chromium for the browser tests ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            print(f"browser tests will be skipped: {' '.join(cmd)} failed: {done.stderr[-500:]}")
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
