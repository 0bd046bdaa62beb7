"""Recipe inheritance (``extends``) and ``frs recipe show``: key-by-key override, strict keys, one-line errors."""

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from frs_cli.cli.app import app
from frs_cli.config import load_recipe, merge_tables, recipe_from_dict, recipe_to_toml, resolve_extends
from frs_cli.errors import ConfigError

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
runner = CliRunner()

BASE = """
name = "base"
[train]
epochs = 24
lr = 0.01
lr_steps = [16, 22]
[distill]
alpha = 0.005
beta = 0.02
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def one_line_error(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert result.stdout == ""  # nothing half-printed
    return lines[0]


def test_child_overrides_its_base_key_by_key(tmp_path):
    write(tmp_path / "base" / "b.toml", BASE)
    child = write(tmp_path / "c.toml", 'extends = "base/b.toml"\nname = "c"\n[train]\nlr = 0.02\nlr_steps = [8]\n')
    r = load_recipe(child)
    assert r.name == "c"
    assert r.train.lr == 0.02 and r.train.epochs == 24  # lr overridden, epochs inherited from the same table
    assert r.train.lr_steps == (8,)  # a list is replaced, not merged
    assert (r.distill.alpha, r.distill.beta) == (0.005, 0.02)  # a table the child does not name
    assert load_recipe(child, ["train.epochs=2"]).train.epochs == 2  # --set goes on top of the resolved recipe


def test_extends_chains_through_several_files_relative_to_each(tmp_path):
    write(tmp_path / "a" / "root.toml", BASE)
    write(tmp_path / "a" / "b" / "mid.toml", 'extends = "../root.toml"\n[train]\nepochs = 12\n[distill]\nbeta = 0.1\n')
    leaf = write(tmp_path / "leaf.toml", 'extends = "a/b/mid.toml"\n[distill]\nalpha = 0.1\n')
    r = load_recipe(leaf)
    assert (r.train.epochs, r.train.lr) == (12, 0.01)
    assert (r.distill.alpha, r.distill.beta) == (0.1, 0.1)
    assert r.name == "base"
    assert "extends" not in resolve_extends(leaf)


def test_merge_tables_does_not_modify_its_inputs():
    base, child = {"t": {"a": 1, "b": 2}}, {"t": {"b": 3}}
    assert merge_tables(base, child) == {"t": {"a": 1, "b": 3}}
    assert base == {"t": {"a": 1, "b": 2}} and child == {"t": {"b": 3}}


def test_a_cycle_is_one_line_naming_the_chain(tmp_path):
    write(tmp_path / "x.toml", 'extends = "y.toml"\n')
    write(tmp_path / "y.toml", 'extends = "x.toml"\n')
    with pytest.raises(ConfigError, match=r"got a cycle: '[^']*x\.toml' -> '[^']*y\.toml' -> '[^']*x\.toml'"):
        load_recipe(tmp_path / "x.toml")
    write(tmp_path / "self.toml", 'extends = "self.toml"\n')
    line = one_line_error("recipe", "show", tmp_path / "self.toml")
    assert "expected a chain of distinct files, got a cycle" in line


def test_an_unknown_key_in_the_base_or_the_child_names_the_file(tmp_path):
    write(tmp_path / "bad_base.toml", BASE + "[cache]\nviewz = ['orig']\n")
    child = write(tmp_path / "c.toml", 'extends = "bad_base.toml"\n')
    line = one_line_error("recipe", "show", child)
    assert "recipe key 'cache.viewz': unknown key in '" in line and "bad_base.toml' (valid keys here:" in line
    write(tmp_path / "b.toml", BASE)
    child = write(tmp_path / "c2.toml", 'extends = "b.toml"\n[train]\nepoch = 3\n')
    line = one_line_error("recipe", "show", child)
    assert "recipe key 'train.epoch': unknown key in '" in line and "c2.toml' (valid keys here:" in line
    child = write(tmp_path / "c3.toml", 'extends = "b.toml"\n[train]\nepochs = "three"\n')  # types: checked merged
    assert "recipe key 'train.epochs': expected an integer, got str 'three'" in one_line_error("recipe", "show", child)


def test_a_value_of_the_wrong_type_names_the_file_or_the_set_that_gave_it(tmp_path):
    write(tmp_path / "b.toml", BASE + '[data]\nroot = "d"\n')
    write(tmp_path / "mid.toml", 'extends = "b.toml"\n[train]\nlr = "0.1"\n')
    top = write(tmp_path / "top.toml", 'extends = "mid.toml"\n[train]\nepochs = 3\n')
    line = one_line_error("recipe", "show", top)
    assert line == f"error: recipe key 'train.lr': expected a number, got str '0.1', in '{tmp_path / 'mid.toml'}'"
    good = write(tmp_path / "good.toml", 'extends = "b.toml"\n')
    line = one_line_error("recipe", "show", good, "--set", "data.root=2017")
    assert line == ("error: recipe key 'data.root': expected str, got int 2017 (from --set data.root=2017; a value "
                    "TOML reads as a number, boolean or list is given as a string quoted: --set 'data.root=\"2017\"')")
    line = one_line_error("recipe", "show", good, "--set", "train.lr_steps=[a]", "--set", "train.lr_steps=[b]")
    assert line.endswith("expected a list, got str '[b]' (from --set train.lr_steps=[b])")
    assert load_recipe(good, ['data.root="2017"']).data.root == "2017"  # the quoted form the hint gives


def test_a_missing_base_file_is_one_line_with_the_file_that_names_it(tmp_path):
    child = write(tmp_path / "c.toml", 'extends = "nowhere/base.toml"\n')
    line = one_line_error("recipe", "show", child)
    assert "base.toml' does not exist (extends of" in line and "c.toml" in line
    assert "extends is relative to the recipe file that names it" in line
    with pytest.raises(ConfigError, match="expected 'extends' to be a file name, got 3"):
        load_recipe(write(tmp_path / "n.toml", "extends = 3\n"))


def test_recipe_show_prints_toml_that_loads_back_to_the_same_recipe(tmp_path):
    path = PIPELINES / "coco_retinanet_r50v2_to_r50.toml"
    result = runner.invoke(app, ["recipe", "show", str(path), "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    table = tomllib.loads(result.stdout)
    assert "extends" not in table
    assert table["train"]["epochs"] == 2 and table["train"]["lr_steps"] == [16, 22]  # base/coco_2x.toml
    assert table["student"]["arch"] == "retinanet_resnet50_fpn"  # this file
    assert table["teacher"]["weights"] == "RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1"  # the R18 recipe it extends
    assert table["cache"]["min_teacher_map"] == 0.30
    assert recipe_from_dict(table) == load_recipe(path, ["train.epochs=2"])
    assert recipe_to_toml(recipe_from_dict(table)) == result.stdout
    assert table["cache"]["split"] == "train"  # the role, as in the source: the folder follows data.train
    printed = write(tmp_path / "resolved.toml", result.stdout)
    moved = load_recipe(printed, ["data.train=train2014"])
    assert moved.cache.split == "train2014" == load_recipe(path, ["data.train=train2014"]).cache.split


def test_recipe_show_says_what_a_models_zero_comes_to_for_its_arch():
    path = PIPELINES / "coco_gfl_r101_to_r50.toml"
    result = runner.invoke(app, ["recipe", "show", str(path), "--set", "student.nms_thresh=0.45"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    teacher = lines[lines.index("[teacher]"):lines.index("[student]")]
    student = lines[lines.index("[student]"):lines.index("[teacher_train]")]
    assert "nms_thresh = 0.0  # 0: gfl_resnet101_fpn's own, 0.6" in teacher  # GFL's, not the 0.5 of most
    assert "anchor_size = 0  # 0: gfl_resnet101_fpn's own, 64 px" in teacher
    assert "nms_thresh = 0.45" in student  # a value set is printed bare
    fcos = runner.invoke(app, ["recipe", "show", str(PIPELINES / "coco_fcos_r50_to_r18.toml")]).stdout.splitlines()
    assert "anchor_size = 0  # 0: fcos_resnet18_fpn's own, 8 px" in fcos and "nms_thresh = 0.0  # 0: fcos_resnet18_fpn's own, 0.5" in fcos
    assert tomllib.loads(result.stdout)["teacher"]["nms_thresh"] == 0.0  # the comment is TOML's: the value reads back


def test_recipe_show_refuses_an_arch_training_would_refuse():
    line = one_line_error("recipe", "show", PIPELINES / "demo.toml", "--set", "teacher.arch=retinanet_huge")
    assert line.startswith("error: recipe key 'teacher.arch': expected an arch `frs models` lists, got unknown arch "
                           "'retinanet_huge' (from --set teacher.arch=retinanet_huge; valid names: ")


def test_pipeline_recipes_extend_a_shared_base_instead_of_repeating_it():
    coco = sorted(PIPELINES.glob("coco_*.toml"))
    embedded = sorted(PIPELINES.glob("embedded_*.toml"))
    assert len(coco) == 9 and len(embedded) == 3  # 5 torchvision pairs, 4 with mmdetection teachers
    for path in coco + embedded:
        table = tomllib.loads(path.read_text())
        assert "extends" in table, path.name
        # a recipe's own cache table is its detector's multi-scale views (FCOS) at most, or an R50 pair's settings
        own_cache = set(table.get("cache", {})) - ({"views"} if "min_sizes" in table.get("train", {}) else set())
        assert "geometry" not in table and not own_cache or path.name.endswith("_to_r50.toml"), path.name
    for name in ("coco_fcos_r50_to_r18.toml", "coco_fcos_r101_mmdet_to_r50.toml"):  # the paper's FCOS: 640 or 800
        fcos = load_recipe(PIPELINES / name)
        assert fcos.train.min_sizes == (640, 800) and fcos.geometry.min_size == 800, name
        assert fcos.cache.views == ("orig", "hflip", "orig@640", "hflip@640"), name
    assert load_recipe(PIPELINES / "coco_fcos_r50_to_r18.toml").train.grad_clip == 35.0
    assert load_recipe(PIPELINES / "coco_gfl_r101_to_r50.toml").train.lr_steps == (8, 11)
    assert load_recipe(PIPELINES / "embedded_fcos.toml").teacher.anchor_size == 0  # not demo.toml's 16


def test_the_recipes_the_examples_name_load_from_any_folder_by_path_or_name(tmp_path, monkeypatch):
    """``--help`` and README examples write ``-p pipelines/X.toml``, which only a clone of the project has: from any
    other folder that path, and the bare name ``X``, read the recipe installed with frs (before: "does not exist",
    with a hint for the demo's recipe only). A name no recipe has is one line pointing at ``frs recipe list``."""
    from frs_cli.config import load_recipe
    from frs_cli.errors import ConfigError

    here = {p.stem: load_recipe(p) for p in PIPELINES.glob("*.toml")}
    monkeypatch.chdir(tmp_path)
    assert not (tmp_path / "pipelines").exists()
    for name, recipe in here.items():
        assert load_recipe(f"pipelines/{name}.toml") == recipe, name
        assert load_recipe(name) == recipe == load_recipe(f"{name}.toml"), name
    assert load_recipe("coco_fcos_r50_to_r18", ["train.lr=0.5"]).train.lr == 0.5
    for missing in ("pipelines/mine.toml", "mine"):
        with pytest.raises(ConfigError) as info:
            load_recipe(missing)
        assert f"expected a TOML file, but '{missing}' does not exist" in info.value.message
        assert info.value.hint.startswith("frs recipe list names the recipes installed with frs")
    with pytest.raises(ConfigError) as info:
        load_recipe("mine/coco_fcos_r50_to_r18.toml")  # a path of the user's own: no installed recipe stands in
    assert info.value.hint is None
    (tmp_path / "embedded_gfl").mkdir()  # a run folder named after its recipe: no recipe, so no stand-in
    assert load_recipe("embedded_gfl") == here["embedded_gfl"]
    (tmp_path / "coco_fcos_r50_to_r18.toml").write_text('extends = "pipelines/coco_fcos_r50_to_r18.toml"\n')
    for mine in ("coco_fcos_r50_to_r18.toml", "coco_fcos_r50_to_r18"):  # a file here is read, for X as for X.toml
        with pytest.raises(ConfigError, match="extends of 'coco_fcos_r50_to_r18.toml'"):
            load_recipe(mine)


def test_every_recipe_is_installed_with_frs_and_pipelines_links_to_it():
    """pyproject's package data must carry each recipe (a non-editable install has no pipelines/), and
    pipelines/ holds links to them, not copies that could drift apart."""
    import fnmatch

    from frs_cli.config import installed_recipes

    root = PIPELINES.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["frs_cli"]
    files = [p.relative_to(root / "frs_cli").as_posix() for p in installed_recipes().rglob("*") if p.is_file()]
    assert len(files) >= 14 and "recipes/base/coco_2x.toml" in files
    for f in files:
        assert any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/") for pat in patterns), f
    for entry in PIPELINES.iterdir():
        assert entry.is_symlink(), entry
        assert entry.resolve() == (installed_recipes() / entry.name).resolve(), entry


def test_recipe_list_names_every_installed_recipe_with_its_teacher_student_and_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["recipe", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("recipes installed with frs (") and lines[0].endswith("recipes):")
    rows = {line.split()[0]: line.split(None, 1)[1] for line in lines[1:]}
    assert sorted(rows) == sorted(p.stem for p in PIPELINES.glob("*.toml"))
    assert rows["coco_fcos_r50_to_r18"] == "fcos_resnet50_fpn -> fcos_resnet18_fpn, data data/coco"
    assert rows["demo"] == "retinanet_small_fpn -> retinanet_tiny_fpn, data demo/data"
