"""The plateau note: printed once when the average loss fell less than the set fraction over the last saves."""
from gpt2_simple.training.plateau import PLATEAU_FRACTION, PLATEAU_SAVES, Plateau


def test_note_once_when_the_average_levels_off(capsys):
    plateau = Plateau()
    for step, loss in [(100, 3.0), (200, 2.5), (300, 2.2), (400, 2.1)]:
        plateau.record(step, (loss * 10, 10.0))
    assert capsys.readouterr().out == ""  # 2.1 is 30% below 3.0
    plateau.record(500, (2.49 * 1.0, 1.0))  # 2.49 vs 2.5 three saves ago: levelled off
    out = capsys.readouterr().out
    assert out == ("The average loss has levelled off: 2.49 at step 500, 2.50 at step 200 (3 saves ago); more steps "
                   "may not help: check held-out text with gpt2.evaluate(sess, 'heldout.txt') or gpt2_simple "
                   "evaluate heldout.txt\n")
    plateau.record(600, (2.49, 1.0))
    assert capsys.readouterr().out == ""  # once per call
    assert (PLATEAU_FRACTION, PLATEAU_SAVES) == (0.02, 3)


def test_falling_by_the_fraction_is_not_a_plateau(capsys):
    plateau = Plateau()
    for step, loss in enumerate([2.0, 1.99, 1.98, 2.0 * (1 - PLATEAU_FRACTION) - 1e-6]):
        plateau.record(step, (loss, 1.0))
    assert capsys.readouterr().out == ""
