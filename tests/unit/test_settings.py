from codeexec.settings import selector_matches


def test_selector_matches_equality_terms() -> None:
    assert selector_matches("", None)
    assert selector_matches("a=b", {"a": "b", "c": "d"})
    assert selector_matches("a=b, c==d", {"a": "b", "c": "d"})
    assert not selector_matches("a=b", {"a": "c"})
    assert not selector_matches("a=b", None)
