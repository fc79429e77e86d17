"""jobkit: the basement of the four stages. What any FastAPI app or ARQ deployment needs, and no
chapter teaches.

The stages import it the way FastAPI's tutorial files import `fastapi`: as a library whose
insides are not the lesson. Each module says what it is for and what a learner may skip. The
rule that decides what lives here (docs/jobkit.md):

    What the chapter teaches stays in the stage. What any FastAPI app or ARQ deployment needs
    and the chapter does not teach goes to jobkit/; and where a kept library already does it,
    the stage uses the library instead.

jobkit never imports a stage. A project that copies a stage copies this folder with it (or
installs this repository's package, which ships both).
"""
