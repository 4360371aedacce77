"""What the Python scripts share: installing what they import into the running interpreter."""
import subprocess
import sys


def ensure(*packages):
    """Install each (module, package) whose module cannot be imported, with this Python's pip."""
    missing = []
    for module, package in packages:
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *missing])
