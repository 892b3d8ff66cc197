"""The book's decoders, written from its description (benchmarks/d2l_book.py), behave as the
book's."""

import torch
from d2l_book import d2l_seq2seq_gru, d2l_transformer


def step_by_step(model, src, src_valid_len, dec_input):
    """Logits from feeding the decoder one token at a time, as predict_step does."""
    state = model.decoder.init_state(model.encoder(src, src_valid_len), src_valid_len)
    outputs = []
    for t in range(dec_input.shape[1]):
        logits, state = model.decoder(dec_input[:, t:t + 1], state)
        outputs.append(logits)
    return torch.cat(outputs, dim=1)


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(3, 30, (3, 7), generator=generator)
    dec_input = torch.randint(3, 40, (3, 6), generator=generator)
    return src, torch.tensor([7, 5, 2]), dec_input


def test_transformer_with_fixed_positions_decodes_incrementally_like_its_forward():
    torch.manual_seed(0)
    model = d2l_transformer(30, 40, dropout=0.0, fix_positions=True)
    src, src_valid_len, dec_input = batch()
    model.train()  # the book's decoder applies its causal mask only in training mode
    full = model(src, dec_input, src_valid_len)
    model.eval()
    with torch.no_grad():
        incremental = step_by_step(model, src, src_valid_len, dec_input)
    torch.testing.assert_close(incremental, full.detach(), rtol=0, atol=1e-5)


def test_book_transformer_gives_every_step_position_zero():
    """The book's decoder adds P[:, :1] at every prediction step: its incremental logits differ
    from its own training-time forward after the first step, and equal a decoder that is fed
    position 0's encoding each time."""
    torch.manual_seed(0)
    book = d2l_transformer(30, 40, dropout=0.0)
    src, src_valid_len, dec_input = batch()
    book.train()
    full = book(src, dec_input, src_valid_len).detach()
    book.eval()
    with torch.no_grad():
        incremental = step_by_step(book, src, src_valid_len, dec_input)
    torch.testing.assert_close(incremental[:, 0], full[:, 0], rtol=0, atol=1e-5)
    assert (incremental[:, 1:] - full[:, 1:]).abs().max() > 1e-3


def test_gru_decoder_concatenates_context_and_decodes_incrementally():
    torch.manual_seed(0)
    model = d2l_seq2seq_gru(30, 40, embed_size=16, num_hiddens=24, num_layers=2,
                            dropout=0.0).eval()
    src, src_valid_len, dec_input = batch()
    with torch.no_grad():
        full = model(src, dec_input, src_valid_len)
        incremental = step_by_step(model, src, src_valid_len, dec_input)
    assert full.shape == (3, 6, 40)
    assert model.decoder.rnn.rnn.input_size == 16 + 24  # embedding ++ context
    torch.testing.assert_close(incremental, full, rtol=0, atol=1e-5)


def test_predict_step_runs_every_step():
    torch.manual_seed(0)
    model = d2l_transformer(30, 40, num_hiddens=32, ffn_num_hiddens=16).eval()
    src, src_valid_len, dec_input = batch()
    dec_input[:, 0] = 1  # <bos>
    with torch.no_grad():
        tokens, _ = model.predict_step((src, dec_input, src_valid_len, dec_input), "cpu", 9)
    assert tokens.shape == (3, 9)


def test_fix_positions_is_a_switch_on_the_trained_decoder():
    """Turning ``fix_positions`` on after training gives the fixed decoder's predictions."""
    torch.manual_seed(0)
    model = d2l_transformer(30, 40, dropout=0.0)  # the book's behaviour
    src, src_valid_len, dec_input = batch()
    model.train()
    full = model(src, dec_input, src_valid_len).detach()
    model.eval()
    model.decoder.fix_positions = True
    with torch.no_grad():
        incremental = step_by_step(model, src, src_valid_len, dec_input)
    torch.testing.assert_close(incremental, full, rtol=0, atol=1e-5)


def test_book_loss_is_the_books_masked_loss_not_the_packages():
    """The book (section 10.7) masks padding out of ``Seq2Seq.loss``; the d2l 1.0.3 package's
    ``Seq2Seq.loss`` is the plain mean over all positions. ``book_loss`` is the book's: equal
    to the package's loss on a batch with no padding, different once there is padding."""
    from d2l_book import book_loss

    from course_lib.compat import load_d2l

    d2l = load_d2l()
    package = d2l.Seq2Seq(encoder=None, decoder=None, tgt_pad=0, lr=0.1)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 11, generator=generator)
    tgt = torch.randint(1, 11, (4, 6), generator=generator)
    torch.testing.assert_close(book_loss(logits, tgt, pad=0), package.loss(logits, tgt))
    tgt[1, 3:] = 0
    tgt[3, 1:] = 0
    real = tgt != 0
    expected = torch.nn.functional.cross_entropy(logits[real], tgt[real])
    torch.testing.assert_close(book_loss(logits, tgt, pad=0), expected)
    assert abs(float(book_loss(logits, tgt, pad=0) - package.loss(logits, tgt))) > 1e-3


def test_book_train_step_is_the_books_loss_clipped_then_one_step():
    from types import SimpleNamespace

    from d2l_book import book_loss, book_train_step

    torch.manual_seed(0)
    model = d2l_transformer(30, 40, dropout=0.0)
    src, src_valid_len, dec_input = batch()
    tgt = torch.roll(dec_input, -1, dims=1)
    tgt[0, 4:] = 0
    step = SimpleNamespace(src=src, src_valid_len=src_valid_len, dec_input=dec_input, tgt=tgt)
    model.train()
    expected = book_loss(model(src, dec_input, src_valid_len), tgt, pad=0).detach()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = book_train_step(model, step, optimizer, pad=0, clip=0.5)
    torch.testing.assert_close(loss, expected)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before,
                                                                   strict=True)])
    assert 0 < float(moved.norm()) <= 0.5 + 1e-5  # SGD with lr 1 moves by the clipped gradient
