"""Outside verification, qube side: ``logvm.Export`` (in the LogVM) and
``logvm.VerifySnapshot`` (in a fresh offline DispVM). See docs/verifying.md."""
