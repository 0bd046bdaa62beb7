"""Recipes: TOML -> frozen dataclasses, key and type checking, --set overrides, file errors."""

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from frs_cli.archs import ModelConfig, arch_spec
from frs_cli.cache.config import CacheConfig
from frs_cli.config import Recipe, apply_overrides, load_recipe, parse_override, recipe_from_dict
from frs_cli.data.config import DataConfig
from frs_cli.data.geometry import GeometryConfig
from frs_cli.errors import ConfigError
from frs_cli.train.config import DistillConfig, TrainConfig

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _assert_lists_valid_keys(message: str, cls) -> None:
    names = _field_names(cls)
    assert names  # the check below must look at something
    for name in names:
        assert name in message, (name, message)


def _assert_matches_table(obj, table: dict, prefix: str = "") -> None:
    """Every key in the TOML table is reflected in the dataclass, lists as tuples or lists."""
    for key, value in table.items():
        got = getattr(obj, key)
        if isinstance(value, dict):
            _assert_matches_table(got, value, f"{prefix}{key}.")
        elif isinstance(value, list):
            assert list(got) == value, f"{prefix}{key}"
        else:
            assert got == value, f"{prefix}{key}"
            # an integer in a float field arrives as float; otherwise the TOML type is kept
            allowed = {type(value), float} if type(value) is int else {type(value)}
            assert type(got) in allowed, f"{prefix}{key}"


# ------------------------------------------------------------------------------------------- the recipes


def test_every_pipeline_recipe_loads():
    paths = sorted(PIPELINES.glob("*.toml"))
    assert paths, f"no recipes under {PIPELINES}"
    for path in paths:
        recipe = load_recipe(path)
        assert isinstance(recipe, Recipe)
        with open(path, "rb") as f:
            table = tomllib.load(f)
        table.pop("extends", None)
        role = table.get("cache", {}).pop("split", "train")  # a role, resolved to its folder (below)
        _assert_matches_table(recipe, table)  # the file's own keys win over its base's
        assert role == "train" and recipe.cache.split == recipe.data.train, path.name
        if path.name.startswith("coco_"):  # a COCO teacher is scored before caching (README: the teacher check)
            assert recipe.cache.check_teacher_images == 500 and recipe.cache.min_teacher_map == 0.3, path.name


def test_cache_split_names_a_role_and_takes_its_folder_from_data():
    data = {"train": "train2017", "val": "val2017"}
    assert recipe_from_dict({"data": data}).cache.split == "train2017"
    assert recipe_from_dict({"data": data, "cache": {"split": "val"}}).cache.split == "val2017"
    # a folder name equal to data.train / data.val: the old spelling, still accepted
    assert recipe_from_dict({"data": data, "cache": {"split": "train2017"}}).cache.split == "train2017"
    assert recipe_from_dict({"data": data, "cache": {"split": "val2017"}}).cache.split == "val2017"
    # a resolved recipe reads back to itself (checkpoints store it as a dict)
    resolved = recipe_from_dict({"data": data, "cache": {"split": "val"}})
    assert recipe_from_dict(resolved.to_dict()) == resolved


def test_cache_split_that_is_neither_role_nor_data_folder_is_one_line_naming_both_keys(tmp_path):
    path = PIPELINES / "coco_retinanet_r50v2_to_r50.toml"
    with pytest.raises(ConfigError, match=r"^recipe key 'cache.split': expected 'train' or 'val' \(the folder comes "
                                          r"from data.train = 'train2014' or data.val = 'val2017'\), got 'train2017' "
                                          r"\(from --set cache.split=train2017; name the folder in data.train or data.val only") as err:
        load_recipe(path, ["data.train=train2014", "cache.split=train2017"])
    assert "\n" not in str(err.value)
    # overriding the folder alone moves the cache with it
    assert load_recipe(path, ["data.train=train2014"]).cache.split == "train2014"


def test_empty_table_gives_defaults():
    recipe = recipe_from_dict({})
    assert recipe == dataclasses.replace(Recipe(), distill=DistillConfig(alpha=0.005, beta=0.02))  # RetinaNet's
    assert recipe.train == TrainConfig()
    assert recipe.geometry == GeometryConfig()
    assert recipe.cache == CacheConfig()


def test_recipe_values_land_in_the_right_dataclasses():
    recipe = recipe_from_dict({
        "name": "r",
        "data": {"root": "/d", "label_map": "category_id"},
        "geometry": {"min_size": 64, "max_size": 96, "size_divisible": 16},
        "teacher": {"arch": "retinanet_small_fpn", "anchor_size": 16},
        "student": {"arch": "retinanet_tiny_fpn"},
        "teacher_train": {"epochs": 5},
        "train": {"epochs": 7, "lr_steps": [3, 5]},
        "distill": {"alpha": 0.1, "mask": "gt"},
        "cache": {"views": ["hflip"], "dtype": "bfloat16"},
    })
    assert recipe.name == "r"
    assert recipe.data == DataConfig(root="/d", label_map="category_id")
    assert recipe.geometry == GeometryConfig(64, 96, 16)
    assert recipe.teacher == ModelConfig(arch="retinanet_small_fpn", anchor_size=16)
    assert recipe.student == ModelConfig(arch="retinanet_tiny_fpn")
    assert recipe.train.lr_steps == (3, 5)
    assert isinstance(recipe.train.lr_steps, tuple)
    assert recipe.distill == DistillConfig(alpha=0.1, beta=0.02, mask="gt")  # beta: RetinaNet's official one
    assert recipe.cache.views == ("hflip",)
    assert recipe.train_config("teacher").epochs == 5
    assert recipe.train_config("student").epochs == 7
    assert recipe.model_config("teacher").arch == "retinanet_small_fpn"
    assert recipe.model_config("student").arch == "retinanet_tiny_fpn"


def test_recipes_are_frozen():
    recipe = recipe_from_dict({"train": {"epochs": 2}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.name = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.train.epochs = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.geometry.min_size = 3
    assert recipe.train.epochs == 2


# ------------------------------------------------------------------------------------------ unknown keys


def test_unknown_top_level_key_raises_naming_key_and_valid_keys():
    with pytest.raises(ConfigError, match=r"recipe key 'nmae': unknown key \(valid keys here: ") as info:
        recipe_from_dict({"nmae": "x"})
    _assert_lists_valid_keys(str(info.value), Recipe)


def test_unknown_nested_key_raises_with_full_name_and_valid_keys():
    with pytest.raises(ConfigError, match=r"recipe key 'train\.epochz': unknown key") as info:
        recipe_from_dict({"train": {"epochz": 3}})
    _assert_lists_valid_keys(str(info.value), TrainConfig)
    with pytest.raises(ConfigError, match=r"recipe key 'teacher\.weight': unknown key") as info:
        recipe_from_dict({"teacher": {"weight": "x"}})
    _assert_lists_valid_keys(str(info.value), ModelConfig)


def test_scalar_where_table_expected_raises():
    with pytest.raises(ConfigError, match=r"recipe key 'train': expected a table, got int 3"):
        recipe_from_dict({"train": 3})


# ------------------------------------------------------------------------------------------------- types


@pytest.mark.parametrize("value, got", [("3", "str '3'"), (3.0, "float 3.0"), (True, "bool True"), ([3], r"list \[3\]")])
def test_non_integer_for_int_field_raises_naming_key(value, got):
    with pytest.raises(ConfigError, match=rf"recipe key 'train\.epochs': expected an integer, got {got}"):
        recipe_from_dict({"train": {"epochs": value}})


def test_list_for_str_field_raises_naming_key():
    with pytest.raises(ConfigError, match=r"recipe key 'teacher\.arch': expected str, got list \['a'\]"):
        recipe_from_dict({"teacher": {"arch": ["a"]}})
    with pytest.raises(ConfigError, match=r"recipe key 'name': expected str, got int 5"):
        recipe_from_dict({"name": 5})


def test_int_accepted_where_float_expected_and_converted():
    recipe = recipe_from_dict({"train": {"lr": 1, "grad_clip": 35}, "distill": {"alpha": 0}})
    assert recipe.train.lr == 1.0
    assert type(recipe.train.lr) is float
    assert recipe.train.grad_clip == 35.0
    assert type(recipe.train.grad_clip) is float
    assert recipe.distill.alpha == 0.0
    assert type(recipe.distill.alpha) is float


@pytest.mark.parametrize("value, got", [(True, "bool True"), ("0.1", "str '0.1'")])
def test_non_number_for_float_field_raises_naming_key(value, got):
    with pytest.raises(ConfigError, match=rf"recipe key 'distill\.beta': expected a number, got {got}"):
        recipe_from_dict({"distill": {"beta": value}})


def test_int_for_bool_field_raises_naming_key():
    with pytest.raises(ConfigError, match=r"recipe key 'train\.amp': expected bool, got int 1"):
        recipe_from_dict({"train": {"amp": 1}})


def test_list_items_are_checked_with_index_in_key():
    with pytest.raises(ConfigError, match=r"recipe key 'train\.lr_steps\[1\]': expected an integer, got str 'x'"):
        recipe_from_dict({"train": {"lr_steps": [8, "x"]}})
    with pytest.raises(ConfigError, match=r"recipe key 'cache\.views': expected a list, got str 'orig'"):
        recipe_from_dict({"cache": {"views": "orig"}})


def test_literal_fields_reject_other_values():
    with pytest.raises(ConfigError, match=r"recipe key 'distill\.mask': expected one of 'frs', 'gt', got 'box'"):
        recipe_from_dict({"distill": {"mask": "box"}})
    with pytest.raises(ConfigError, match=r"recipe key 'cache\.dtype': expected one of .*'int8'.*got 'uint4'"):
        recipe_from_dict({"cache": {"dtype": "uint4"}})
    assert recipe_from_dict({"cache": {"dtype": "int8"}}).cache.dtype == "int8"
    with pytest.raises(ConfigError, match=r"recipe key 'data\.label_map'"):
        recipe_from_dict({"data": {"label_map": "names"}})
    assert recipe_from_dict({"distill": {"mask": "gt"}}).distill.mask == "gt"


def test_dataclass_validation_errors_come_through_as_config_errors():
    with pytest.raises(ConfigError, match=r"recipe key 'geometry\.min_size': expected a positive integer, got 0"):
        recipe_from_dict({"geometry": {"min_size": 0}})
    with pytest.raises(ConfigError, match=r"recipe key 'geometry\.max_size': expected at least min_size"):
        recipe_from_dict({"geometry": {"min_size": 900, "max_size": 800}})
    with pytest.raises(ConfigError, match=r"recipe key 'cache\.write_processes': expected an integer >= 0, got -1"):
        recipe_from_dict({"cache": {"write_processes": -1}})
    with pytest.raises(ConfigError, match=r"cache\.write_processes': expected an integer or one of 'auto', got str 'many'"):
        recipe_from_dict({"cache": {"write_processes": "many"}})
    assert recipe_from_dict({}).cache.resize_on_gpu


def test_a_value_no_alternative_of_a_union_takes_names_each_alternative_or_the_mistake_inside_one():
    from typing import Literal

    from frs_cli.config import _convert
    from frs_cli.train.config import TrainConfig

    tp = int | list[int] | TrainConfig | Literal["auto", "off"]
    assert _convert([1, 2], tp, "k") == [1, 2] and _convert("off", tp, "k") == "off"
    with pytest.raises(ConfigError, match=r"^recipe key 'k': expected an integer or a list or a table or one of "
                                          r"'auto', 'off', got str 'many'$"):
        _convert("many", tp, "k")
    with pytest.raises(ConfigError, match=r"^recipe key 'k\[1\]': expected an integer, got str 'b'$"):
        _convert([1, "b"], tp, "k")  # a list, with a wrong item
    with pytest.raises(ConfigError, match=r"^recipe key 'k\.epochs': expected an integer, got str 'x'$"):
        _convert({"epochs": "x"}, tp, "k")  # a table, with a wrong key


def test_writer_processes_auto_is_half_the_cores_per_gpu_process_from_1_to_8():
    auto = recipe_from_dict({}).cache
    assert auto.write_processes == "auto" and recipe_from_dict({}).cache.cuda_graphs is True
    assert [auto.writer_processes(cores=c) for c in (1, 2, 6, 16, 64)] == [1, 1, 3, 8, 8]
    assert auto.writer_processes(local_processes=4, cores=16) == 2  # four GPUs of one host share its cores
    assert auto.writer_processes(local_processes=8, cores=128) == 8
    assert recipe_from_dict({"cache": {"write_processes": "auto"}}).cache == auto
    for n in (0, 3, 12):  # a number is taken as it is
        assert recipe_from_dict({"cache": {"write_processes": n}}).cache.writer_processes(cores=2) == n


# --------------------------------------------------------------------------------------------- overrides


def test_parse_override_reads_values_as_toml_and_bare_words_as_strings():
    assert parse_override("train.epochs=3") == (["train", "epochs"], 3)
    assert parse_override("train.lr=0.02") == (["train", "lr"], 0.02)
    assert parse_override("train.amp=false") == (["train", "amp"], False)
    assert parse_override("teacher.weights=/a/b.pt") == (["teacher", "weights"], "/a/b.pt")
    assert parse_override('name="x y"') == (["name"], "x y")
    assert parse_override('cache.views=["orig"]') == (["cache", "views"], ["orig"])
    assert parse_override("data.root=a=b") == (["data", "root"], "a=b")  # split at the first '='
    assert parse_override(" train.epochs =4") == (["train", "epochs"], 4)


def test_parse_override_rejects_text_without_key_or_equals():
    with pytest.raises(ConfigError, match=r"--set: expected KEY=VALUE \(for example train\.epochs=2\), got 'train'"):
        parse_override("train")
    with pytest.raises(ConfigError, match="--set: expected KEY=VALUE with a non-empty key, got '=3'"):
        parse_override("=3")


def test_overrides_set_int_string_and_list():
    table = {"train": {"epochs": 12, "lr": 0.01}, "teacher": {"arch": "retinanet_small_fpn"}}
    out = apply_overrides(table, ["train.epochs=3", "teacher.weights=/a/b.pt", 'cache.views=["orig"]'])
    assert out == {"train": {"epochs": 3, "lr": 0.01},
                   "teacher": {"arch": "retinanet_small_fpn", "weights": "/a/b.pt"},
                   "cache": {"views": ["orig"]}}
    # the input table is not modified
    assert table == {"train": {"epochs": 12, "lr": 0.01}, "teacher": {"arch": "retinanet_small_fpn"}}
    recipe = recipe_from_dict(out)
    assert recipe.train.epochs == 3
    assert type(recipe.train.epochs) is int
    assert recipe.teacher.weights == "/a/b.pt"
    assert recipe.cache.views == ("orig",)
    assert isinstance(recipe.cache.views, tuple)


def test_later_override_wins():
    out = apply_overrides({}, ["train.epochs=3", "train.epochs=5"])
    assert out == {"train": {"epochs": 5}}


def test_override_through_a_non_table_raises():
    with pytest.raises(ConfigError, match=r"--set 'name\.x=1': 'name' is not a table"):
        apply_overrides({"name": "n"}, ["name.x=1"])


def test_load_recipe_applies_overrides_on_top_of_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('name = "file"\n[train]\nepochs = 12\nlr = 0.04\n', encoding="utf-8")
    recipe = load_recipe(path, ["train.epochs=3", "teacher.weights=/a/b.pt", 'cache.views=["orig"]'])
    assert recipe.name == "file"
    assert recipe.train.epochs == 3
    assert recipe.train.lr == 0.04
    assert recipe.teacher.weights == "/a/b.pt"
    assert recipe.cache.views == ("orig",)
    assert load_recipe(path).train.epochs == 12


def test_override_of_unknown_key_raises(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('name = "file"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"recipe key 'train\.epochz': unknown key") as info:
        load_recipe(path, ["train.epochz=3"])
    _assert_lists_valid_keys(str(info.value), TrainConfig)
    with pytest.raises(ConfigError, match=r"recipe key 'trian': unknown key"):
        load_recipe(path, ["trian.epochs=3"])


def test_override_of_wrong_type_raises_naming_key(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"recipe key 'train\.epochs': expected an integer, got str 'three'"):
        load_recipe(path, ["train.epochs=three"])


def test_a_number_python_reads_but_toml_does_not_is_given_back_in_tomls_spelling(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'train\.lr': expected a number, got str '\.5'") as info:
        load_recipe(path, ["train.lr=.5"])
    assert info.value.hint == "from --set train.lr=.5; TOML writes this number 0.5: --set train.lr=0.5"
    with pytest.raises(ConfigError) as info:
        load_recipe(path, ["train.epochs=3."])
    assert info.value.hint == "from --set train.epochs=3.; TOML writes this number 3: --set train.epochs=3"
    with pytest.raises(ConfigError) as info:  # not a number to Python either: no spelling to offer
        load_recipe(path, ["train.lr=1e"])
    assert info.value.hint == "from --set train.lr=1e"
    # a number TOML reads is never the spelling's fault: a wrong key, a list expected, a value out of range
    for text in ("train.epoch=2", "train.lr_steps=5", "train.epochs=0"):
        with pytest.raises(ConfigError) as info:
            load_recipe(path, [text])
        assert info.value.hint == f"from --set {text}", info.value.hint


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_an_unknown_arch_is_refused_when_the_recipe_is_read_naming_its_key(role, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(f'[{role}]\narch = "retinanet_huge"\n', encoding="utf-8")
    message = rf"^recipe key '{role}\.arch': expected an arch `frs models` lists, got unknown arch 'retinanet_huge'"
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert re.fullmatch(message + r", in '.*r\.toml'", info.value.message), info.value.message
    assert "retinanet_resnet50_fpn_v2" in info.value.hint  # the valid names
    with pytest.raises(ConfigError) as info:
        load_recipe(tmp_path / "r.toml", [f"{role}.arch=retinanet_huge"])
    assert re.fullmatch(message, info.value.message), info.value.message
    assert info.value.hint.startswith(f"from --set {role}.arch=retinanet_huge; valid names: retinanet_resnet50_fpn")


# ------------------------------------------------------------------------------------------------- files


def test_missing_recipe_file_raises_naming_it(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"recipe: expected a TOML file, but .*nope\.toml.* does not exist"):
        load_recipe(path)


def test_invalid_toml_raises_naming_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train\nepochs = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"recipe .*bad\.toml.*: not valid TOML"):
        load_recipe(path)


def test_load_recipe_errors_name_keys_from_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[distill]\nmask = "box"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"recipe key 'distill\.mask'"):
        load_recipe(path)


@pytest.mark.parametrize("arch, alpha, beta", [("retinanet_tiny_fpn", 0.005, 0.02), ("fcos_tiny_fpn", 0.01, 0.05),
                                               ("gfl_tiny_fpn", 0.1, 0.05), ("fasterrcnn_tiny_fpn", 0.002, 0.1)])
def test_distill_weights_left_out_are_the_student_familys_official_ones(arch, alpha, beta, tmp_path):
    """FRS.md's table: a recipe without distill.alpha / distill.beta gets its student family's weights, resolved
    into the recipe (what recipe.json and ``frs recipe show`` hold); one that sets either keeps it. A recipe
    extending the demo's (RetinaNet) with another family's student gets that family's, not RetinaNet's."""
    recipe = recipe_from_dict({"student": {"arch": arch}})
    assert (recipe.distill.alpha, recipe.distill.beta) == (alpha, beta)
    assert recipe.to_dict()["distill"]["alpha"] == alpha
    kept = recipe_from_dict({"student": {"arch": arch}, "distill": {"alpha": 0.3}})
    assert (kept.distill.alpha, kept.distill.beta) == (0.3, beta)
    child = tmp_path / "child.toml"
    child.write_text(f'extends = "{PIPELINES / "demo.toml"}"\n[student]\narch = "{arch}"\n')
    assert (load_recipe(child).distill.alpha, load_recipe(child).distill.beta) == (alpha, beta)
    family = arch_spec(arch).family
    assert DistillConfig().for_family(family) == DistillConfig(alpha=alpha, beta=beta)


def test_multi_scale_training_and_its_cache_views_are_one_set_of_short_sides():
    """The paper's FCOS trains at short side 640 or 800: ``train.min_sizes`` draws one per image and epoch, and a
    cache for that student holds the same flips at both sizes. A view spelled twice or a size beyond
    geometry.max_size is refused when the recipe loads; views that are not the student's training views are refused
    by ``check_training_scales`` (what teacher-cache and distill --cache call), each in one line naming the key."""
    from frs_cli.train.loop import training_views

    four = ["orig", "hflip", "orig@640", "hflip@640"]
    recipe = recipe_from_dict({"train": {"min_sizes": [640, 800]}, "cache": {"views": ["orig@800", *four[1:]]}})
    assert recipe.cache.views == tuple(four)  # the one spelling: orig at geometry.min_size (800) is "orig"
    recipe.cache.check_training_scales(recipe.train.min_sizes, recipe.geometry)
    assert training_views(0.5, recipe.train.min_sizes, recipe.geometry) == ("orig@640", "hflip@640", "orig", "hflip")
    assert training_views(0.5, (), recipe.geometry) == ("orig", "hflip")
    assert training_views(0.0, (800, 960), recipe.geometry) == ("orig", "orig@960")
    geometry = recipe.geometry
    for views, min_sizes in ((["hflip"], ()), (["orig@640"], (640,)), (["orig@640", "orig"], (800, 640))):
        CacheConfig(views=tuple(views)).check_training_scales(min_sizes, geometry)  # one flip at every side: fine
    not_training = [
        (["orig", "hflip"], (640, 800),
         (r"recipe key 'cache\.views': expected orig and hflip at each of the student's training short sides "
         r"\[640, 800\] \(train\.min_sizes, or geometry\.min_size\), got \['orig', 'hflip'\] \(short sides \[800\]\) "
         r"\(set cache\.views = \['orig', 'hflip', 'orig@640', 'hflip@640'\]; a cache holds the views it was written "
         r"with, so distilling at other sides needs a cache of those views \(frs teacher-cache\)\)")),
        (four, (), r"at each of the student's training short sides \[800\] .*\(short sides \[640, 800\]\)"),
        (["orig", "hflip@640"], (640, 800), r"\(set cache\.views = \['orig', 'hflip', 'orig@640', 'hflip@640'\];"),
        (["orig", "hflip", "orig@640"], (640, 800), r"got \['orig', 'hflip', 'orig@640'\] \(short sides \[640, 800\]\)"),
    ]
    for views, min_sizes, message in not_training:
        with pytest.raises(ConfigError, match=message):
            CacheConfig(views=tuple(views)).check_training_scales(min_sizes, geometry)
    refused = [
        ({"cache": {"views": ["orig", "orig@800"]}},
         (r"recipe key 'cache\.views': expected each view once, got \['orig', 'orig@800'\] \(at geometry\.min_size = "
         r"800 a view needs no '@800'\)")),
        ({"cache": {"views": ["orig", "vflip@640"]}},
         (r"recipe key 'cache\.views': expected orig or hflip, optionally with a short side in px after '@' \(e\.g\. hflip@640\), "
         r"got 'vflip@640'")),
        ({"train": {"min_sizes": [1400]}, "cache": {"views": ["orig@1400"]}},
         r"recipe key 'train\.min_sizes': expected short sides of at most geometry\.max_size \(1333\), got 1400"),
        ({"cache": {"views": ["orig", "orig@1400"]}},
         r"recipe key 'cache\.views': expected short sides of at most geometry\.max_size \(1333\), got 'orig@1400'"),
        ({"train": {"min_sizes": [640, 640]}},
         r"recipe key 'train\.min_sizes': expected short sides without repeats, got \[640, 640\]"),
        ({"teacher_train": {"min_sizes": [0]}},
         r"recipe key 'teacher_train\.min_sizes\[0\]': expected an integer >= 1, got 0"),
    ]
    for table, message in refused:
        with pytest.raises(ConfigError, match=message):
            recipe_from_dict(table)
    # training at other sides than the cache's is the commands' concern, not the recipe's: a baseline loads
    assert recipe_from_dict({"train": {"min_sizes": [640, 800]}}).cache.views == ("orig", "hflip")


def test_lr_gamma_is_a_decay_factor_and_lr_steps_count_from_their_epochs_start():
    """train.lr_gamma in (0, 1]: 10 (a slip for 0.1) would raise the LR tenfold at each step, so it is refused,
    and 1 (no decay) is accepted. lr_steps as mmdetection's: (8, 11) of 12 epochs gives epochs 1-8 the LR, 9-11
    the LR times gamma, 12 times gamma squared."""
    from frs_cli.train.schedule import lr_factor

    for bad in (10.0, 1.5, 0.0):
        with pytest.raises(ConfigError, match=rf"recipe key 'train\.lr_gamma': expected a finite number in \(0, 1\], "
                                              rf"got {bad!r}"):
            recipe_from_dict({"train": {"lr_gamma": bad}})
    assert recipe_from_dict({"train": {"lr_gamma": 1.0}}).train.lr_gamma == 1.0
    per_epoch = 5
    factors = [lr_factor(e * per_epoch, per_epoch, 0, 1.0, (8, 11), 0.1) for e in range(12)]
    assert factors == pytest.approx([1.0] * 8 + [0.1] * 3 + [0.01])


def test_cache_keys_refused_from_set_name_their_key_and_the_set(tmp_path):
    """cache.views, cache.batch_size, cache.workers, cache.write_processes and geometry's sizes given badly through
    --set: one message
    naming the recipe key and the --set it came from, as every other key's (before: ``cache.views: …`` and one
    message for three keys at once, without where they were set)."""
    path = tmp_path / "r.toml"
    path.write_text('name = "r"\n')
    cases = {'cache.views=["vflip"]': r"recipe key 'cache\.views': expected orig or hflip, .*got 'vflip'",
             'cache.views=["orig","orig"]': r"recipe key 'cache\.views': expected a non-empty list without repeats",
             "cache.batch_size=0": r"recipe key 'cache\.batch_size': expected an integer >= 1, got 0",
             "cache.workers=-1": r"recipe key 'cache\.workers': expected an integer >= 0, got -1",
             "cache.write_processes=-2": r"recipe key 'cache\.write_processes': expected an integer >= 0, got -2",
             "geometry.min_size=0": r"recipe key 'geometry\.min_size': expected a positive integer, got 0",
             "geometry.max_size=64": r"recipe key 'geometry\.max_size': expected at least min_size \(800\), got 64"}
    for given, message in cases.items():
        with pytest.raises(ConfigError, match=message) as info:
            load_recipe(path, [given])
        assert info.value.hint == f"from --set {given}"
    assert load_recipe(path, ['cache.write_processes="auto"']).cache.write_processes == "auto"
