"""Every plot of cf.pl on the moscot time course (Agg backend): what is drawn, where, and in which colours."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

import cellflow as cf  # noqa: E402
from cellflow.pl._embedding import _grid_flow  # noqa: E402
from cellflow.tl._fitted import neighbor_weights  # noqa: E402

TYPE_COLOURS = ["#aa0000", "#00aa00", "#0000aa", "#aaaa00", "#00aaaa"]  # one per cell type, in category order


@pytest.fixture(scope="module")
def moscot(moscot_fit):
    adata, _ = moscot_fit("otcfm")
    # "project it yourself": a linear 2-D embedding, and the velocity projected exactly onto it
    rotation = np.array([[0.8, -0.6], [0.6, 0.8]])
    adata.obsm["X_lin"] = adata.obsm["X_pca"][:, :2] @ rotation
    adata.obsm["cellflow_velocity_lin"] = adata.obsm["cellflow_velocity_pca"][:, :2] @ rotation
    # a non-linear embedding named like UMAP, with the velocity pushed through its Jacobian
    scale = adata.obsm["X_pca"][:, :2].std(axis=0)
    squashed = np.tanh(adata.obsm["X_pca"][:, :2] / scale)
    adata.obsm["X_umap"] = squashed
    adata.obsm["cellflow_velocity_umap"] = adata.obsm["cellflow_velocity_pca"][:, :2] / scale * (1 - squashed**2)
    adata.uns["cell_type_colors"] = np.array(TYPE_COLOURS, dtype=object)
    return adata


@pytest.fixture(scope="module")
def day10_to_11(moscot):
    return cf.tl.transitions(moscot, 10, 11, progress=False)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _is_png(path, min_bytes=10_000):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes


def _type_colours(adata, rows=slice(None)):
    codes = adata.obs["cell_type"].cat.codes.to_numpy()[rows]
    return np.array([to_rgb(TYPE_COLOURS[c]) for c in codes])


def _legend_colours(ax):
    legend = ax.get_legend()
    return {text.get_text(): to_rgb(handle.get_color()) for text, handle in zip(legend.texts, legend.legend_handles)}


@pytest.mark.parametrize("basis", ["pca", "X_umap", "umap"])
def test_velocity_colours_categories_from_uns_on_any_basis(moscot, basis):
    ax = cf.pl.velocity(moscot, basis, color="cell_type", show=False)
    cells = ax.collections[0]
    np.testing.assert_allclose(cells.get_offsets(), moscot.obsm[f"X_{basis.removeprefix('X_')}"][:, :2])
    np.testing.assert_allclose(cells.get_facecolors()[:, :3], _type_colours(moscot))
    legend = _legend_colours(ax)
    assert legend == {t: to_rgb(TYPE_COLOURS[i]) for i, t in enumerate(moscot.obs["cell_type"].cat.categories)}
    assert ax.get_xlabel() == f"{basis.removeprefix('X_')} 1"


def test_palette_argument_overrides_uns(moscot):
    categories = list(moscot.obs["cell_type"].cat.categories)
    as_dict = {t: c for t, c in zip(categories, ["red", "green", "blue", "black", "orange"])}
    ax = cf.pl.velocity(moscot, color="cell_type", palette=as_dict, show=False)
    expected = [to_rgb(as_dict[t]) for t in moscot.obs["cell_type"]]
    np.testing.assert_allclose(ax.collections[0].get_facecolors()[:, :3], expected)
    ax = cf.pl.velocity(moscot, color="cell_type", palette=["red", "blue"], show=False)  # cycled, as scanpy
    codes = moscot.obs["cell_type"].cat.codes.to_numpy()
    cycled = [to_rgb(["red", "blue"][c % 2]) for c in codes]
    np.testing.assert_allclose(ax.collections[0].get_facecolors()[:, :3], cycled)
    ax = cf.pl.velocity(moscot, color="cell_type", palette="Set2", show=False)
    colours = plt.get_cmap("Set2")(np.linspace(0, 1, len(categories)))[:, :3]
    np.testing.assert_allclose(ax.collections[0].get_facecolors()[:, :3], colours[codes], atol=1 / 255)
    with pytest.raises(KeyError, match="palette has no colour.*Trophoblast"):
        cf.pl.velocity(moscot, color="cell_type", palette={"Epithelial": "red"}, show=False)


def test_time_is_coloured_early_dark_late_light(moscot):
    adata = moscot.copy()
    ax = cf.pl.velocity(adata, show=False)  # default colour: the time column ("day", unordered categories)
    face = ax.collections[0].get_facecolors()[:, :3]
    lightness = face @ np.array([0.2126, 0.7152, 0.0722])
    days = adata.obs["day"].astype(float).to_numpy()
    means = [lightness[days == d].mean() for d in (10.0, 10.5, 11.0)]
    assert means[0] < means[1] < means[2]  # a sequential palette, readable in greyscale
    assert np.ptp(lightness[days == 10.5]) == 0  # one colour per day
    adata.uns["day_colors"] = ["#111111", "#222222", "#333333"]  # colours the user chose win, as in scanpy
    ax = cf.pl.velocity(adata, show=False)
    np.testing.assert_allclose(ax.collections[0].get_facecolors()[:, :3],
                               [to_rgb(adata.uns["day_colors"][c]) for c in adata.obs["day"].cat.codes])
    ax = cf.pl.velocity(adata, color="time", show=False)  # numbers: a continuous map with a colour bar
    assert ax.collections[0].get_cmap().name.startswith("viridis")
    np.testing.assert_allclose(np.sort(ax.collections[0].get_array()), np.sort(adata.obs["time"].to_numpy()))


def test_a_gene_colours_by_its_expression(moscot):
    gene = moscot.var_names[3]
    ax = cf.pl.velocity(moscot, color=gene, show=False)
    expression = np.asarray(moscot[:, gene].X.todense() if hasattr(moscot.X, "todense") else moscot[:, gene].X)
    np.testing.assert_allclose(np.sort(ax.collections[0].get_array()), np.sort(expression.ravel()), rtol=1e-6)
    with pytest.raises(KeyError, match="neither a column of adata.obs nor a gene"):
        cf.pl.velocity(moscot, color="no_such_gene", show=False)


def test_legend_locations(moscot):
    ax = cf.pl.velocity(moscot, color="cell_type", show=False)
    assert ax.get_legend().get_bbox_to_anchor().x0 >= ax.get_window_extent().x1 - 1  # right margin, beside the axes
    ax = cf.pl.velocity(moscot, color="cell_type", legend_loc="best", show=False)
    assert ax.get_legend()._loc == 0
    ax = cf.pl.velocity(moscot, "umap", color="cell_type", legend_loc="on data", show=False)
    assert ax.get_legend() is None
    labels = {text.get_text(): text.get_position() for text in ax.texts}
    epithelial = (moscot.obs["cell_type"] == "Epithelial").to_numpy()
    assert set(labels) == set(moscot.obs["cell_type"].cat.categories)
    np.testing.assert_allclose(labels["Epithelial"], np.median(moscot.obsm["X_umap"][epithelial], axis=0))
    for none in (None, "none"):
        ax = cf.pl.velocity(moscot, color="cell_type", legend_loc=none, show=False)
        assert ax.get_legend() is None and not ax.texts
    with pytest.raises(ValueError, match="legend_loc='left'"):
        cf.pl.velocity(moscot, color="cell_type", legend_loc="left", show=False)


def test_streamlines_stay_where_cells_are():
    rng = np.random.default_rng(0)
    left = rng.normal([0, 0], 0.3, size=(300, 2))
    right = rng.normal([10, 0], 0.3, size=(300, 2))
    points = np.vstack([left, right])
    gx, gy, u, v = _grid_flow(points, np.tile([1.0, 0.5], (600, 1)))
    gap = (gx > 2) & (gx < 8)
    assert np.isnan(u[gap]).all() and np.isnan(v[gap]).all()
    near = np.isfinite(u)
    assert near.sum() > 10
    np.testing.assert_allclose(u[near], 1.0)  # a uniform field stays uniform where it is kept
    np.testing.assert_allclose(v[near], 0.5)


@pytest.mark.parametrize("basis", ["pca", "umap"])
def test_streamlines_on_an_embedding_start_and_end_near_cells(moscot, basis):
    ax = cf.pl.velocity(moscot, basis, show=False)
    points = moscot.obsm[f"X_{basis}"][:, :2]
    span = np.ptp(points, axis=0)
    lines = np.vstack([segment for segment in ax.collections[1].get_segments()])
    distance = np.sqrt((((lines[:, None, :] - points[None, :, :]) / span) ** 2).sum(-1)).min(axis=1)
    assert distance.max() < 2.5 / 29  # within a few grid steps of a cell


@pytest.mark.parametrize("basis", [None, "umap"])
def test_interpolation_marks_predicted_cells_apart(moscot, basis, tmp_path):
    predicted = [cf.tl.interpolate(moscot, 10, t) for t in (10.25, 10.75)]
    ax = cf.pl.interpolation(moscot, predicted, basis=basis, color="cell_type", save=str(tmp_path / "i.png"))
    assert _is_png(tmp_path / "i.png")
    measured, first, second = ax.collections[:3]
    assert not measured.get_linewidths().any() and first.get_linewidths().all() and second.get_linewidths().all()
    np.testing.assert_allclose(first.get_edgecolors()[:, :3], 0.0)  # outlined in black
    assert first.get_paths()[0] != second.get_paths()[0]  # one marker shape per predicted time
    labels = [text.get_text() for legend in ax.artists + [ax.get_legend()] for text in legend.texts]
    assert {"measured", "predicted, day 10.25", "predicted, day 10.75"} <= set(labels)
    sources = moscot.obs_names.get_indexer(predicted[0].obs["source_cell"])
    np.testing.assert_allclose(first.get_facecolors()[:, :3], _type_colours(moscot, sources))  # its ancestor's type
    positions = predicted[0].obsm["X_pca"]
    if basis is None:
        np.testing.assert_allclose(first.get_offsets(), positions[:, :2], rtol=1e-6)
    else:  # placed by its nearest measured cells in the representation
        index, weight = neighbor_weights(positions, moscot.obsm["X_pca"], 15)
        expected = (weight[:, :, None] * moscot.obsm["X_umap"][index]).sum(axis=1)
        np.testing.assert_allclose(first.get_offsets(), expected, rtol=1e-6)
        assert ax.get_xlabel() == "umap 1"


def test_interpolation_coloured_by_time_shares_one_scale(moscot):
    predicted = cf.tl.interpolate(moscot, 10, 10.25)
    ax = cf.pl.interpolation(moscot, predicted, components=(1, 2), show=False)
    measured, guess = ax.collections[:2]
    assert measured.norm.vmin == 10 and measured.norm.vmax == 11 and guess.norm is measured.norm
    np.testing.assert_allclose(guess.get_array(), 10.25)


def test_interpolation_sizes_cells_by_the_mass_of_its_own_key(moscot_fit):
    adata, _ = moscot_fit("otcfm")
    cf.tl.fit(adata, method="wfr", key_added="flow", delta=5.0, n_steps=30, progress=False)
    predicted = cf.tl.interpolate(adata, 10, 10.5, key="flow")
    mass = predicted.obs["flow_mass"].to_numpy()
    assert "cellflow_mass" not in predicted.obs and mass.std() > 0
    ax = cf.pl.interpolation(adata, predicted, key="flow", size=10, show=False)
    np.testing.assert_allclose(ax.collections[1].get_sizes(), 10 * mass / mass.mean(), rtol=1e-6)


def test_fate_titles_name_the_direction_of_time(moscot):
    adata = moscot.copy()
    table = cf.tl.fate(adata, 10, 11, progress=False)
    params = adata.uns["cellflow_fate_params"]
    assert {k: params[k] for k in ("from_time", "to_time", "groupby")} == {"from_time": 10.0, "to_time": 11.0,
                                                                          "groupby": "cell_type"}
    assert params["across"] == "chain" and 0.0 <= params["disagreement"] <= 1.0  # day 10.5 lies between
    axes = cf.pl.fate(adata, basis="umap", show=False)
    assert len(axes) == table.shape[1]
    assert [ax.get_title() for ax in axes] == [f"to {group}\nday 10 -> day 11" for group in table.columns]
    cf.tl.ancestors(adata, 11, 10, progress=False)
    ax = cf.pl.fate(adata, "Epithelial", fate_key="cellflow_ancestors", show=False)
    assert ax.get_title() == "from Epithelial\nday 10 -> day 11"
    del adata.uns["cellflow_fate_params"]  # a table without its times: the title names the cells' own day
    axes = cf.pl.fate(adata, basis="umap", show=False)
    assert axes[0].get_title() == f"to {table.columns[0]}\ncells of day 10"
    ax = cf.pl.fate(adata, fate_key="cellflow_ancestors", argmax=True, title="mine", show=False)
    assert ax.get_title() == "mine"
    with pytest.raises(KeyError, match="Neurons.*not in"):
        cf.pl.fate(adata, "Neurons", show=False)


@pytest.mark.parametrize("basis", ["pca", "umap"])
def test_fate_argmax_takes_the_groups_colours(moscot, basis):
    adata = moscot.copy()
    table = cf.tl.fate(adata, 10, 11, progress=False)
    ax = cf.pl.fate(adata, basis=basis, argmax=True, show=False)
    has = table.notna().all(axis=1).to_numpy()
    best = table[has].to_numpy().argmax(axis=1)
    categories = list(adata.obs["cell_type"].cat.categories)
    expected = [to_rgb(TYPE_COLOURS[categories.index(table.columns[b])]) for b in best]
    cells = ax.collections[1]  # above the grey cells without a fate
    np.testing.assert_allclose(cells.get_facecolors()[:, :3], expected)
    assert ax.get_title() == "most likely fate\nday 10 -> day 11"


def test_fate_plot_needs_fates(moscot):
    with pytest.raises(KeyError, match="run cellflow.tl.fate"):
        cf.pl.fate(moscot.copy(), show=False)


@pytest.mark.parametrize("normalize, attribute", [("forward", "row_normalized"), ("backward", "column_normalized"),
                                                  (None, "counts")])
def test_transitions_heatmap_shows_the_table(day10_to_11, normalize, attribute):
    ax = cf.pl.transitions(day10_to_11, normalize=normalize, show=False)
    table = getattr(day10_to_11, attribute)
    np.testing.assert_allclose(np.ma.filled(ax.images[0].get_array(), np.nan), table.to_numpy(), equal_nan=True)
    finite = np.isfinite(table.to_numpy()).ravel()
    written = [float(text.get_text()) for text in ax.texts]
    np.testing.assert_allclose(written, table.to_numpy().ravel()[finite], rtol=5e-3, atol=5e-3)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(table.index)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(table.columns)
    assert ax.get_ylabel() == "cell_type at day 10" and ax.get_xlabel() == "cell_type at day 11"
    assert ax.get_title().startswith("day 10 -> day 11")


def test_transitions_heatmap_from_the_anndata(moscot, day10_to_11):
    ax = cf.pl.transitions(moscot, 10, 11, annotate=False, show=False)
    np.testing.assert_allclose(np.ma.filled(ax.images[0].get_array(), np.nan),
                               day10_to_11.row_normalized.to_numpy(), equal_nan=True)
    assert not ax.texts
    with pytest.raises(ValueError, match="normalize='rows'"):
        cf.pl.transitions(day10_to_11, normalize="rows", show=False)
    with pytest.raises(ValueError, match="pass from_time= and to_time="):
        cf.pl.transitions(moscot, show=False)


def test_sankey_bands_are_as_wide_as_the_transitions(moscot):
    ax = cf.pl.sankey(moscot, [10, 10.5, 11], "cell_type", show=False)
    bands = {c.get_gid(): c for c in ax.collections if c.get_gid()}
    categories = list(moscot.obs["cell_type"].cat.categories)
    for t1, t2 in ((10, 10.5), (10.5, 11)):
        counts = cf.tl.transitions(moscot, t1, t2, progress=False).counts
        share = counts / counts.to_numpy().sum()
        for source in share.index:
            for target in share.columns:
                band = bands.get(f"{t1:g}->{t2:g}:{source}->{target}")
                if share.loc[source, target] == 0:
                    assert band is None
                    continue
                vertices = band.get_paths()[0].vertices
                at_start = vertices[np.isclose(vertices[:, 0], vertices[:, 0].min())]
                assert np.ptp(at_start[:, 1]) == pytest.approx(share.loc[source, target], rel=1e-9)
                assert to_rgb(band.get_facecolor()[0]) == pytest.approx(to_rgb(TYPE_COLOURS[categories.index(source)]))
    nodes = {p.get_gid(): p for p in ax.patches if p.get_gid()}
    stromal = TYPE_COLOURS[categories.index("Stromal")]
    assert to_rgb(nodes["10:Stromal"].get_facecolor()) == pytest.approx(to_rgb(stromal))
    assert ax.get_title() == "cell_type: day 10 -> day 10.5 -> day 11"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["day 10", "day 10.5", "day 11"]
    with pytest.raises(ValueError, match="increasing"):
        cf.pl.sankey(moscot, [11, 10], show=False)


def _every_plot(adata, predicted, transitions):
    return {
        "velocity": lambda **kw: cf.pl.velocity(adata, "umap", color="cell_type", **kw),
        "interpolation": lambda **kw: cf.pl.interpolation(adata, predicted, basis="umap", **kw),
        "fate": lambda **kw: cf.pl.fate(adata, basis="umap", argmax=True, **kw),
        "transitions": lambda **kw: cf.pl.transitions(transitions, **kw),
        "sankey": lambda **kw: cf.pl.sankey(adata, [10, 10.5, 11], **kw),
        "loss": lambda **kw: cf.pl.loss(adata, **kw),
    }


def test_every_plot_draws_into_the_given_axes_and_saves(moscot, day10_to_11, tmp_path):
    adata = moscot.copy()
    cf.tl.fate(adata, 10, 11, progress=False)
    predicted = cf.tl.interpolate(adata, 10, 10.5)
    for name, plot in _every_plot(adata, predicted, day10_to_11).items():
        fig, ax = plt.subplots()
        assert plot(ax=ax, show=False) is ax, name
        assert ax.has_data() or ax.images, name
        path = tmp_path / f"{name}.png"
        plot(save=str(path), show=False)
        assert _is_png(path), name


def test_growth(tmp_path, moscot_fit):
    adata, _ = moscot_fit("wfr")
    adata.obsm["X_umap"] = np.tanh(adata.obsm["X_pca"][:, :2])
    ax = cf.pl.growth(adata, basis="pca", save=str(tmp_path / "growth.png"), show=False)
    assert _is_png(tmp_path / "growth.png")
    low, high = ax.collections[0].get_clim()
    assert low == pytest.approx(-high)  # the diverging map is centred at zero growth
    fig, given = plt.subplots()
    ax = cf.pl.growth(adata, basis="X_umap", ax=given, title="growth", show=False)
    assert ax is given and ax.get_title() == "growth"
    np.testing.assert_allclose(np.sort(ax.collections[0].get_offsets(), axis=0),
                               np.sort(adata.obsm["X_umap"], axis=0))


def test_growth_needs_a_growth_model(moscot):
    with pytest.raises(KeyError, match="cellflow_growth_rate.*method='wfr'"):
        cf.pl.growth(moscot, show=False)


def test_velocity_on_another_embedding_is_carried_through_the_neighbours(moscot):
    from cellflow.pl._embedding import _fitted_velocity

    adata = moscot.copy()
    exact = adata.obsm.pop("cellflow_velocity_umap")  # the velocity pushed through the embedding's Jacobian
    projected = _fitted_velocity(adata, "cellflow", "umap", (0, 1))
    cosine = (projected * exact).sum(axis=1) / np.linalg.norm(projected, axis=1) / np.linalg.norm(exact, axis=1)
    assert np.median(cosine) > 0.9  # 0.98 when written
    speed = np.linalg.norm(projected, axis=1) / np.linalg.norm(exact, axis=1)
    assert 0.3 < np.median(speed) < 1.5  # averaging over neighbours shortens the steps (0.63)
    ax = cf.pl.velocity(adata, basis="umap", show=False)
    assert ax.get_xlabel() == "umap 1" and "cellflow_velocity_umap" not in adata.obsm  # nothing written
    with pytest.raises(KeyError, match="X_tsne.*scanpy.tl.tsne"):
        cf.pl.velocity(adata, basis="tsne", show=False)


def test_loss(moscot, tmp_path):
    cf.pl.loss(moscot, save=str(tmp_path / "loss.png"), show=False)
    assert _is_png(tmp_path / "loss.png")
