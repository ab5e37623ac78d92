from hsmca.models import KeyType


def test_fixture_makes_a_ca(ca_factory):
    ca_dir, tok, created = ca_factory(KeyType.P256)
    assert (ca_dir / "hsmca.toml").exists()
    assert created.token.serial == tok.serial
