"""Debian packages as sample sources: the evaluation-only ones are refused; what is cached is
reused; licences are read from the package's copyright file."""

from __future__ import annotations

import pytest

from mictag.corpus.packages import EVALUATION_ONLY, FetchError, fetch, licence, version


@pytest.mark.parametrize("name", EVALUATION_ONLY)
def test_evaluation_only_packages_are_refused_before_anything_is_downloaded(name, tmp_path):
    with pytest.raises(FetchError, match="independent evaluation"):
        fetch([name], tmp_path)
    assert not list(tmp_path.iterdir())


def test_an_unpacked_package_is_reused_and_its_licence_read(tmp_path):
    root = tmp_path / "timgm6mb-soundfont_1.3-5_all"
    doc = root / "usr" / "share" / "doc" / "timgm6mb-soundfont"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
                                   "Files: *\nLicense: GPL-2\n\nFiles: debian/*\nLicense: GPL-2+\n")
    (tmp_path / "other_1_all.partial").mkdir()  # an interrupted unpack is not a package
    assert fetch(["timgm6mb-soundfont"], tmp_path) == {"timgm6mb-soundfont": root}  # no apt-get needed
    assert version(root) == "1.3-5"
    assert licence(root, "timgm6mb-soundfont") == "GPL-2, GPL-2+"
    assert licence(tmp_path / "nothing_1_all", "nothing") == "no copyright file in the package"


def test_a_free_form_copyright_file_gives_the_line_that_names_its_licence(tmp_path):
    """musescore-general-soundfont's file is not DEP-5: its "Licence:" heading stands alone."""
    doc = tmp_path / "usr" / "share" / "doc" / "musescore-general-soundfont"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("This package was debianised by someone on a date.\n\nLicence:\n\n"
                                   "MuseScore_General_HQ SoundFont (MIT, parts PD or CC0):\n\nCopyright 2018\n")
    assert licence(tmp_path, "musescore-general-soundfont") == "MuseScore_General_HQ SoundFont (MIT, parts PD or CC0):"
