"""Every benchmark's plot is written whole or not at all (an interrupted run leaves no half PNG)."""

import matplotlib.pyplot as plt

from infoq_deploy.core.atomic import atomic_path


def save(fig, path, dpi: int = 120) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
