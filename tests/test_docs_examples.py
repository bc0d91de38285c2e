"""The README quotes the files of ``examples/deploy-repo`` byte for byte: each block after a
``<!-- file: PATH -->`` line is that file as committed, so the two cannot drift apart."""

import re

from conftest import REPO

QUOTED = re.compile(r"^<!-- file: (?P<path>[^ ]+) -->\n```[a-z]*\n(?P<text>.*?)^```$", re.M | re.S)


def quoted_files():
    return [(match["path"], match["text"]) for match in QUOTED.finditer((REPO / "README.md").read_text())]


def test_every_file_the_readme_quotes_is_byte_identical_to_the_example():
    quoted = quoted_files()
    assert {path for path, _ in quoted} >= {"examples/deploy-repo/Saltfile", "examples/deploy-repo/salt-config/master",
                                            "examples/deploy-repo/salt-config/roster"}
    for path, text in quoted:
        assert (REPO / path).read_bytes() == text.encode(), f"README.md quotes {path} differently"


def test_every_file_marker_is_followed_by_its_block():
    markers = re.findall(r"^<!-- file: ", (REPO / "README.md").read_text(), re.M)
    assert len(markers) == len(quoted_files())
