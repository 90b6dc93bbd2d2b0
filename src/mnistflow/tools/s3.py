"""S3, or an S3-compatible store (MinIO, Ceph, moto), for the team server's artifacts and the DVC
remote: one look at the bucket before anything is sent, so that wrong credentials, a missing
bucket or an endpoint nobody answers is one line naming what to fix, not a traceback or DVC's
"unexpected error - Forbidden" once the transfer has begun.

    mnistflow remote-check [-r REMOTE]   the DVC remote (default: the default one); `make push`,
                                          `pull`, `exp-push` and `exp-pull` run it first

A remote that is not on S3, or whose credentials come from a file or anonymous login, passes
without a word: DVC says what is wrong with those."""
from __future__ import annotations

import logging
from pathlib import Path

from mnistflow.cli import Parser
from mnistflow.core.errors import MnistflowError, run_stage

REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId"}
# Settings of a DVC remote that this check does not reproduce: DVC alone decides with them.
UNCHECKED = ("credentialpath", "configpath", "allow_anonymous_login")


def check_bucket(url: str, what: str, fix: dict[str, str], endpoint: str | None = None, key: str | None = None,
                 secret: str | None = None, token: str | None = None, region: str | None = None,
                 profile: str | None = None, verify: bool | str = True) -> None:
    """List at most one key under `url` (s3://bucket/prefix) as these credentials (None: boto3's
    own chain: AWS_* variables, ~/.aws). `fix` says, per cause (credentials, endpoint, bucket),
    what the user changes; `what` names the store in the message."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    from botocore.exceptions import ConnectionError as NoAnswer

    logging.getLogger("botocore.credentials").setLevel(logging.WARNING)  # "Found credentials in ...": noise
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    where = endpoint or "AWS"
    try:
        session = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token,
                                        region_name=region, profile_name=profile)
        s3 = session.client("s3", endpoint_url=endpoint, verify=verify,
                            config=Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 2}))
        s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except NoCredentialsError:
        raise MnistflowError(f"{what}: no S3 credentials: {fix['credentials']}") from None
    except NoAnswer as exc:  # refused, timed out, TLS: nobody (right) answers there
        why = {"ConnectTimeoutError": " (timed out)", "ReadTimeoutError": " (timed out)",
               "SSLError": " (its TLS certificate was refused)"}.get(type(exc).__name__, "")
        raise MnistflowError(f"{what}: no S3 server answers at {where}{why}: {fix['endpoint']}") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code"))
        if code == "NoSuchBucket":
            raise MnistflowError(f"{what}: there is no bucket {bucket!r} at {where}: create it, or "
                                 f"{fix['bucket']}") from None
        if code in REFUSED:
            raise MnistflowError(f"{what}: {where} refused the credentials ({code}): {fix['credentials']}") from None
        if code in ("AccessDenied", "403"):  # known credentials, but not allowed to list the bucket
            raise MnistflowError(f"{what}: {where} denies these credentials s3:ListBucket on {bucket!r} ({code}): "
                                 "grant it (and Get/Put/DeleteObject) to them") from None
        raise MnistflowError(f"{what}: {where} answered {code} ({error.get('Message', exc)})") from None
    except BotoCoreError as exc:  # a profile that is not there, a malformed endpoint URL, ...
        raise MnistflowError(f"{what}: {exc}") from None


def check_dvc_remote(root: Path | str = ".", name: str | None = None) -> None:
    """The DVC remote `name` (default: the default remote), as DVC would reach it."""
    from mnistflow.tracking.dvc_internals import remote_config

    found = remote_config(root, name)
    if found is None or not found[1]["url"].startswith("s3://") or any(found[1].get(k) for k in UNCHECKED):
        return
    name, conf = found
    check_bucket(conf["url"], f"DVC remote {name!r} ({conf['url']})", {
        "credentials": f"dvc remote modify --local {name} access_key_id <key>, and secret_access_key <secret> "
                       "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
        "endpoint": f"dvc remote modify {name} endpointurl <your S3 server's URL> (none for AWS)",
        "bucket": f"dvc remote modify {name} url s3://<bucket>/<path>"},
        endpoint=conf.get("endpointurl"), key=conf.get("access_key_id"), secret=conf.get("secret_access_key"),
        token=conf.get("session_token"), region=conf.get("region"), profile=conf.get("profile"),
        verify=conf.get("ssl_verify", True))


def main(argv: list[str] | None = None, prog: str = "mnistflow remote-check") -> None:
    parser = Parser(prog=prog, description="Can the DVC remote's S3 bucket be reached with its credentials?")
    parser.add_argument("-r", "--remote", help="a DVC remote's name (default: the default remote)")
    args = parser.parse_args(argv)
    check_dvc_remote(".", args.remote)


if __name__ == "__main__":
    run_stage(main)
