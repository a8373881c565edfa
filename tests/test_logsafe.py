from ipsecd.logsafe import safe


def test_newlines_and_controls_are_escaped():
    assert safe("a\nCRITICAL forged") == "a\\x0aCRITICAL forged"
    assert safe("tab\there\x1b[31m") == "tab\\x09here\\x1b[31m"
    assert safe("back\\slash") == "back\\\\slash"


def test_bytes_keep_valid_utf8_and_show_bad_bytes():
    assert safe("grüße".encode()) == "grüße"
    assert safe(b"ok\xff\n") == "ok\\xff\\x0a"


def test_long_text_is_cut_with_a_marker():
    out = safe("x" * 1000, limit=10)
    assert out == "x" * 10 + "...[990 more]"
    assert safe("short", limit=10) == "short"
