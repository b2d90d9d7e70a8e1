"""The LFW verification report: ``report.json`` (fold accuracies, thresholds, mean, standard
error, ROC AUC, EER), ``report.md`` and the plots ``roc.png`` and ``distances.png``, written from
a ``lfw.VerificationResult`` and the pairs' distances."""
import json
import os

from ristretto_py.atomic import atomic_output, make_directory, write_text

from . import lfw

REPORT_FILES = ("report.json", "report.md", "roc.png", "distances.png")


def write_lfw_report(directory, result, dist, same):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    make_directory(directory)
    data = {"protocol": result.protocol, "mean_accuracy": result.mean,
            "standard_error": result.standard_error, "fold_accuracies": result.fold_accuracies,
            "thresholds": result.thresholds, "roc_auc": result.auc, "eer": result.eer}
    write_text(os.path.join(directory, "report.json"), json.dumps(data, indent=2) + "\n")
    fpr, tpr, _, _ = lfw.roc(dist, same)
    for name, draw in (("roc.png", lambda ax: (ax.plot(fpr, tpr), ax.plot([0, 1], [0, 1], ":"),
                                                 ax.set_xlabel("false positive rate"),
                                                 ax.set_ylabel("true positive rate"))),
                       ("distances.png", lambda ax: (ax.hist(dist[same], bins=40, alpha=0.6, label="same"),
                                                     ax.hist(dist[~same], bins=40, alpha=0.6, label="different"),
                                                     ax.set_xlabel("Euclidean distance"), ax.legend()))):
        figure, axes = plt.subplots(figsize=(5, 4), dpi=100)
        draw(axes)
        figure.tight_layout()
        with atomic_output(os.path.join(directory, name)) as handle:
            figure.savefig(handle, format="png", metadata={"Software": None})
        plt.close(figure)
    write_text(os.path.join(directory, "report.md"), "\n".join([
        "# LFW pair verification", "",
        f"Accuracy {result.mean:.4f} ± {result.standard_error:.4f} ({result.protocol} protocol), "
        f"ROC AUC {result.auc:.4f}, EER {result.eer:.4f}.", "",
        "| fold | accuracy | threshold |", "|---|---|---|",
        *[f"| {i} | {a:.4f} | {t:.6g} |" for i, (a, t) in
          enumerate(zip(result.fold_accuracies, result.thresholds), 1)],
        "", "![ROC](roc.png)", "", "![distances](distances.png)", ""]))
