"""Names vulture cannot see being used: frameworks and protocols call them by name.

``make lint`` runs ``vulture pipeline tests bench vulture_whitelist.py``; anything else
it reports is code nothing calls, and goes.
"""

# typer: the CLI's commands, registered by the @app.command() decorator.
synth  # noqa
demo  # noqa

# pydantic: the model configuration and the validators it runs.
model_config  # noqa
_._slug  # noqa
_._pair  # noqa
_._ordered  # noqa
_._check  # noqa
_._bare_scale  # noqa
_._check_kind  # noqa
_._check_names  # noqa

# MLflow: a pyfunc's hook, called when a registered version loads.
_.load_context  # noqa

# FastAPI: the service's routes, registered by their decorators.
clinician_page  # noqa
model_card_route  # noqa
prometheus  # noqa
patient_view  # noqa
not_found  # noqa
openapi_json  # noqa

# Ray: the site actor's methods and its strategies' requests, called by name through
# SiteRuntime.call and SiteActor.handle.
_.recycle  # noqa
_.logistic_gradient  # noqa
_.release_deviation  # noqa
_.fit_dp_logistic  # noqa
_.newton_statistics  # noqa
_.xgb_train  # noqa
_.label_counts  # noqa
_.recalibration_counts  # noqa

# PEP 562: a package's lazy attributes.
__getattr__  # noqa
__dir__  # noqa

# Attributes that libraries read: sqlite3's row factory, Great Expectations' settings.
_.row_factory  # noqa
_.progress_bars  # noqa

# Dataclass fields read by name from their dicts (vars, asdict): sites.json, the
# validation summary's wire form.
n_test  # noqa
recalibration_noise_to_signal  # noqa  (privacy_plan.json)
unexpected_rate  # noqa

# pytest: a module's marks.
pytestmark  # noqa

# gRPC: the methods of the federated service (pipeline/protocol/federated.proto), called
# by grpcio's server for the workers' requests.
Allreduce  # noqa
Allgather  # noqa
AllgatherV  # noqa
Broadcast  # noqa
