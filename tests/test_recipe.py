import pytest

from repfx_deploy.errors import RecipeError
from repfx_deploy.recipe import dump_recipe, load_recipe


def _write(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def test_recipe_parsed_with_relative_paths_resolved(tmp_path):
    path = _write(tmp_path, '''
target = "host"
input_shape = "1,1,28,28"
[data]
calibration = "calib.npz"
calibration_samples = 64
[data.preprocess]
size = 28
mean = 0.5
std = [0.25]
''')
    recipe = load_recipe(path)
    assert recipe.input_specs[0].shape == (1, 1, 28, 28)
    assert recipe.data.calibration == tmp_path / "calib.npz"
    assert recipe.data.preprocess.mean == (0.5,) and recipe.data.calibration_samples == 64


def test_recipe_round_trips_through_resolved_toml(tmp_path):
    recipe = load_recipe(_write(tmp_path, 'input_shape = ["x=1,3,8,8"]\ntune_trials = 4\n'))
    again = load_recipe(_write(tmp_path, dump_recipe(recipe)))
    assert again.input_specs == recipe.input_specs and again.tune_trials == 4


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("targt = 'host'", "Unknown key"),
        ("[data]\ncalib = 'x'", r"\[data\]"),
        ("[data.preprocess]\nmeen = 1", "preprocess"),
        ("[[passes]]\nratio = 0.5", "no kind"),
        ("[[passes]]\nkind = 'prunee'", "Unknown pass kind"),
        ("tune_trials = -1", "tune_trials"),
        ("target = [", "not valid TOML"),
        ("[data.preprocess]\nstd = 0", "std"),
        ("input_shape = 5", r"input_shape must be a string or a list"),
        ("passes = 5", "passes must be an array of tables"),
        ("arch = 5", "arch must be a string"),
        ("[data]\ncalibration_samples = inf", r"data\.calibration_samples must be an integer"),
        ("[data.preprocess]\nsize = 'big'", r"data\.preprocess\.size must be an integer"),
        ("[[passes]]\nkind = 'recover'\nlr = 'fast'", r"passes\[0\]\.lr must be a finite number"),
        ("[[passes]]\nkind = 'snn'\nfinetune_epochs = 1", r"passes\[0\] \(snn\) sets fine-tuning"),
        ("[[passes]]\nkind = 5", "Unknown pass kind"),
    ],
)
def test_bad_recipe_refused_with_clear_error(tmp_path, text, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(_write(tmp_path, text))


def test_pass_kind_without_handler_refused_as_not_available(tmp_path, monkeypatch):
    # every planned kind has a handler now; unregister one to check the message for a kind not built
    from repfx_deploy.passes import registry

    monkeypatch.setitem(registry.BUILTIN_PASSES, "snn", "repfx_deploy.passes.not_built.handler")
    monkeypatch.delitem(registry._BY_KIND, "snn", raising=False)
    with pytest.raises(RecipeError, match="not available"):
        load_recipe(_write(tmp_path, "[[passes]]\nkind = 'snn'"))


def test_missing_recipe_refused(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "none.toml")


def test_overrides_win_over_recipe(tmp_path):
    recipe = load_recipe(_write(tmp_path, 'target = "host"\ntune_trials = 3\n'))
    over = recipe.with_overrides(tune_trials=9, calibration=tmp_path / "c.npz", eval=None)
    assert over.tune_trials == 9 and over.data.calibration == tmp_path / "c.npz" and over.target == "host"
