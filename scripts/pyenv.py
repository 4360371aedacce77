"""What the Python scripts share: installing what they import, and reading an ONNX graph's constants."""
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


def constant_tensors(graph):
    """Name -> (owner, array) for an ONNX graph's initializers and Constant nodes."""
    from onnx import numpy_helper

    found = {i.name: (i, numpy_helper.to_array(i)) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    found[node.output[0]] = (a, numpy_helper.to_array(a.t))
    return found
