"""Optional and system-library dependencies imported where they are needed, with one clear line when
they are missing instead of a traceback from deep inside an import."""

from __future__ import annotations

import re
from types import ModuleType

# The shared libraries open3d's wheel loads from the system, and the Debian/Ubuntu package of each.
OPEN3D_SYSTEM_LIBRARIES = {"libusb-1.0": "libusb-1.0-0", "libGL": "libgl1", "libgomp": "libgomp1",
                           "libEGL": "libegl1", "libX11": "libx11-6"}


def missing_library_line(error: BaseException, module: str, packages: dict[str, str]) -> str | None:
    """The one line naming the system library that `error` (raised while importing `module`) says is
    missing and the apt command that installs it; None when the error is about something else."""
    found = re.search(r"(lib[\w.+-]+?\.so[\w.]*): cannot open shared object file", str(error))
    if found is None:
        return None
    library = found.group(1)
    package = next((pkg for prefix, pkg in packages.items() if library.startswith(prefix + ".so")), None)
    install = f"apt-get install {package}" if package else "install the package that provides it"
    return f"{module} needs the system library {library}, which is not installed (Debian/Ubuntu: {install})"


def import_open3d() -> ModuleType:
    """`import open3d`, or an ImportError of one line naming the missing system library and its apt line."""
    try:
        import open3d
    except (ImportError, OSError) as err:
        line = missing_library_line(err, "open3d", OPEN3D_SYSTEM_LIBRARIES)
        if line is None:
            raise ImportError(f"open3d could not be imported ({err}): pip install open3d") from err
        raise ImportError(line) from err
    return open3d
