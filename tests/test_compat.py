"""The d2l loader: real torchvision when it works, a loud stand-in when it does not."""

import subprocess
import sys


def test_load_d2l_gives_d2l_torch(d2l):
    assert d2l.__name__ == "d2l.torch"
    assert d2l.bleu("il court .", "il est calme .", 2) == 0.0


def test_stand_in_only_when_torchvision_fails_and_it_explains_itself():
    script = (
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec('torchvision') is not None\n"
        "from course_lib.compat import load_d2l, torchvision_is_stand_in\n"
        "d2l = load_d2l()\n"
        "import torchvision\n"
        "if torchvision_is_stand_in():\n"
        "    try:\n"
        "        torchvision.transforms.ToTensor\n"
        "    except ImportError as e:\n"
        "        assert 'torchvision could not be imported' in str(e), e\n"
        "    else:\n"
        "        raise SystemExit('stand-in did not raise')\n"
        "print('stand-in' if torchvision_is_stand_in() else 'real', real)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    kind, real_installed = out[0], out[1] == "True"
    if not real_installed:
        assert kind == "stand-in"


def test_importing_course_lib_does_not_load_d2l_or_torchvision():
    script = ("import sys, course_lib, course_lib.compat, course_lib.masking\n"
              "print('d2l' in sys.modules, 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_a_working_torchvision_is_left_alone(tmp_path):
    """With an importable torchvision on the path, load_d2l must not replace it."""
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("REAL = True\nfrom . import transforms\n")
    (fake / "transforms.py").write_text("")
    script = ("from course_lib.compat import load_d2l, torchvision_is_stand_in\n"
              "load_d2l()\nimport torchvision\n"
              "print(torchvision_is_stand_in(), getattr(torchvision, 'REAL', False))")
    env_path = f"{tmp_path}"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": env_path,
                                          "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out == ["False", "True"]
