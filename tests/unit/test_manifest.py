import pytest

from datalab import manifest
from datalab.manifest import ManifestError


def test_manifest_describes_the_image_family():
    images = manifest.load()
    assert list(images) == ["python", "datascience", "tensorflow", "tensorflow-gpu"]
    assert images["tensorflow"].parent == "datascience"
    assert not images["tensorflow-gpu"].built_by_default
    # every kernel an image installs is a kernelspec in kernels/
    for img in images.values():
        assert (manifest.MANIFEST.parent.parent / "kernels" / img.kernel / "kernel.json").exists()


def test_ancestors_come_first():
    images = manifest.load()
    assert manifest.with_ancestors(images, ["tensorflow-gpu"]) == ["python", "datascience", "tensorflow-gpu"]
    with pytest.raises(ManifestError, match="no image 'pytorch'"):
        manifest.with_ancestors(images, ["pytorch"])


def test_a_broken_manifest_says_what_is_wrong(tmp_path):
    bad = tmp_path / "m.toml"
    bad.write_text('[[image]]\nname = "x"\nfrom = "nowhere"\n')
    with pytest.raises(ManifestError, match="missing"):
        manifest.load(bad)
    fields = 'description="d"\nkernel="k"\nbuild="default"\n'
    bad.write_text(f'[[image]]\nname = "x"\nfrom = "nowhere"\n{fields}')
    with pytest.raises(ManifestError, match="not listed before it"):
        manifest.load(bad)


def test_every_default_profile_names_an_image_of_the_manifest():
    from datalab import schema

    images = manifest.load()
    assert [p["image"] for p in schema.DEFAULT_PROFILES] == list(images)
    assert all(images[p["image"]].built_by_default != bool(p["gpus"]) for p in schema.DEFAULT_PROFILES)
