"""Print the requirements of pyproject.toml (core plus the named extras), one per line.

Lets `make` install the dependencies without building the package.
Usage: python scripts/project_requirements.py train,dev
"""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
requirements = list(project.get("dependencies", []))
for extra in filter(None, (sys.argv[1] if len(sys.argv) > 1 else "").split(",")):
    requirements += project["optional-dependencies"][extra]
print("\n".join(requirements))
