import pytest

from albef_plugin.registry import DuplicateNameError, Registry, UnknownNameError, registry


def test_register_with_name_and_aliases():
    reg = Registry("widget")

    @reg.register("blue_widget", aliases=("blue", "bw"))
    class BlueWidget:
        pass

    assert reg.get("blue_widget") is BlueWidget
    assert reg.get("blue") is BlueWidget and reg.get("bw") is BlueWidget
    assert reg.canonical_name("bw") == "blue_widget"
    assert "blue" in reg and "red" not in reg
    assert reg.names() == ["blue_widget"]


def test_default_name_is_class_name_and_direct_registration():
    reg = Registry("widget")

    class Plain:
        pass

    reg.register(Plain)
    assert reg.get("Plain") is Plain


def test_duplicate_name_or_alias_raises_unless_override():
    reg = Registry("widget")
    reg.register(name="a", aliases=("alias_a",))(type("A", (), {}))
    with pytest.raises(DuplicateNameError, match="'a' is already registered"):
        reg.register(name="a")(type("B", (), {}))
    with pytest.raises(DuplicateNameError, match="alias_a"):
        reg.register(name="c", aliases=("alias_a",))(type("C", (), {}))
    replacement = type("A2", (), {})
    reg.register(name="a", override=True)(replacement)
    assert reg.get("a") is replacement
    # the old aliases of a replaced name do not point to the replacement by accident
    assert "alias_a" not in reg


def test_unknown_name_suggests_closest():
    reg = Registry("model")
    reg.register(name="albef_pretrain")(type("P", (), {}))
    reg.register(name="albef_retrieval")(type("R", (), {}))
    with pytest.raises(UnknownNameError) as info:
        reg.get("albef_pretrian")
    message = str(info.value)
    assert "Did you mean 'albef_pretrain'" in message
    assert "albef_retrieval" in message  # the known names are listed
    assert isinstance(info.value, KeyError)


def test_facade_register_get_list():
    @registry.register_processor("test_facade_processor_xyz")
    class FacadeProcessor:
        pass

    try:
        assert registry.get_processor_class("test_facade_processor_xyz") is FacadeProcessor
        assert "test_facade_processor_xyz" in registry.list_processors()
        with pytest.raises(DuplicateNameError):
            registry.register_processor("test_facade_processor_xyz")(type("Other", (), {}))
    finally:
        from albef_plugin.registry import PROCESSORS

        PROCESSORS._drop("test_facade_processor_xyz")


def test_facade_unknown_kind_is_attribute_error():
    with pytest.raises(AttributeError, match="kinds are"):
        registry.register_gizmo


def test_every_kind_has_a_registry():
    for kind in ("model", "processor", "builder", "trainer", "optimizer", "scheduler", "metric",
                 "launcher"):
        assert callable(getattr(registry, f"register_{kind}"))
        assert callable(getattr(registry, f"get_{kind}_class"))


def test_no_registry_for_components_nothing_selects():
    """Encoders and losses are built by the models from their typed config, and the trainer
    has no callbacks: registries of those would hold names no config could select."""
    for kind in ("encoder", "loss", "callback"):
        with pytest.raises(AttributeError, match="kinds are"):
            getattr(registry, f"register_{kind}")


def test_built_in_components_are_found_in_a_fresh_interpreter():
    """No import of albef_plugin.models first: the first lookup imports the built-ins."""
    import subprocess
    import sys

    code = ("from albef_plugin.registry import registry, UnknownNameError\n"
            "print(registry.get_model_class('albef_pretrain').__name__)\n"
            "try:\n    registry.get_model_class('albef_pretrian')\n"
            "except UnknownNameError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    found, message = done.stdout.strip().splitlines()[-2:]
    assert found == "ALBEFPretrain"
    assert "Did you mean 'albef_pretrain'" in message and "(none registered)" not in message
    assert "must be imported first" not in message and "another package" not in message
