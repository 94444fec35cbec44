"""The README's two set-up commands exist and CI calls the test one."""

import re

from conftest import REPO


def test_readme_commands_exist_in_the_makefile_and_ci():
    readme = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    for command in ("make demo", "make test"):
        assert command in readme, f"README lost `{command}`"
        target = command.split()[1]
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no `{target}` target"
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_readme_cli_commands_are_real_commands():
    from classlm.cli import app

    readme = (REPO / "README.md").read_text()
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    used = set(re.findall(r"^\s*classlm ([a-z]+)", readme, re.M))
    assert used, "the README shows no classlm command"
    assert used <= names, f"README uses commands that do not exist: {used - names}"
