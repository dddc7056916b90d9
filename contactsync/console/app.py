"""The console's routes (Starlette, Jinja2 templates, a little polling JavaScript).

Pages are GETs that only read; every change is a POST that carries the CSRF token and an
explicit confirmation, and is audited. Blocking work (store, Kafka) runs in Starlette's thread
pool: the endpoints are plain functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from contactsync.console import access, actions, health, views
from contactsync.console.backlog import BacklogView
from contactsync.console.signin import RequireSignIn, SignIn, SignInSettings
from contactsync.engine.bcfilter import FILTERABLE_FIELDS
from contactsync.schemas.setup import OutlookDeletePolicy, UserSetup
from contactsync.settings import Settings
from contactsync.store import Store

HERE = Path(__file__).parent
# The forced Full sync's preview (a dry run through Graph and BC) answers within this, or the
# page says it did not and what to do instead: a page never waits in silence past 15 s.
PREVIEW_WITHIN_S = 12.0
USER_ACTIONS = {
    "enable": "Enable sync for this user",
    "disable": "Disable sync for this user",
    "sync": "Run Sync (changes since the last sync, both ways)",
    "full_sync": "Run Full sync (everything, both ways)",
    "dry_sync": "Dry run of Sync: plan only, write nothing",
    "dry_full_sync": "Dry run of Full sync: plan only, write nothing",
    "force_full_sync": "Full sync past the mass-delete safety rail (--force)",
}


def _form(body: bytes) -> dict[str, str]:
    # urlencoded forms only (no uploads): parsed here rather than adding python-multipart.
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


class Console:
    def __init__(self, settings: Settings, store: Store,
                 results: views.ResultsView | None = None) -> None:
        self.settings = settings
        self.store = store
        self.results = results or views.ResultsView()
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.backlog = BacklogView(settings)  # lag and freshness, from the broker

    # --- helpers ---

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.update(csrf=access.csrf_token(request), who=access.who(request),
                       signed_in=bool(getattr(request.state, "user", "")),
                       done=request.query_params.get("done", ""))
        response = self.templates.TemplateResponse(request, name, context, status_code=status)
        access.remember_csrf(request, response)
        return response

    async def posted(self, request: Request) -> dict[str, str] | Response:
        form = _form(await request.body())
        if not access.csrf_ok(request, form):
            return PlainTextResponse(
                "This form has expired or came from another site: reload the page and try "
                "again.", status_code=403)
        return form

    @staticmethod
    def back(url: str, message: str) -> RedirectResponse:
        return RedirectResponse(f"{url}?{urlencode({'done': message})}", status_code=303)

    @property
    def company(self) -> str:
        return self.settings.bc_company or "(default company)"

    # --- pages ---

    def users(self, request: Request) -> Response:
        q = request.query_params
        page = views.users_page(self.store, self.company, self.results, query=q.get("q", ""),
                                sort=q.get("sort", "user"), descending=q.get("desc") == "1",
                                backlog=self.backlog.get()[0])
        return self.page(request, "users.html", page=page)

    def user(self, request: Request) -> Response:
        setup = self.store.setups.get(request.path_params["user_id"])
        if setup is None:
            return self.page(request, "message.html", 404,
                             message="There is no such user: pick one from the Users page.")
        detail = views.user_detail(self.store, setup, self.company, self.results,
                                   backlog=self.backlog.get()[0])
        return self.page(request, "user.html", d=detail, actions=USER_ACTIONS)

    def confirm(self, request: Request) -> Response:
        user_id = request.path_params["user_id"]
        action = request.query_params.get("action", "")
        if action not in USER_ACTIONS or self.store.setups.get(user_id) is None:
            return self.page(request, "message.html", 404,
                             message="Unknown user or action: go back to the Users page.")
        preview, preview_error = None, ""
        if action.startswith("force_"):  # what it would remove, before anyone confirms
            try:
                preview = health.bounded(
                    lambda: actions.force_preview(self.settings, self.store, user_id),
                    "the dry run", PREVIEW_WITHIN_S)
            except health.NoAnswer:  # a page never waits in silence; nobody forces blind
                preview_error = actions.preview_too_slow(user_id, PREVIEW_WITHIN_S)
            except Exception as exc:  # the button stays away: nobody forces blind
                preview_error = health.sentence(exc)
        return self.page(request, "confirm.html", user_id=user_id, action=action,
                         label=USER_ACTIONS[action], dry_run=self.results.last_dry_run(user_id),
                         preview=preview, preview_error=preview_error)

    async def act(self, request: Request) -> Response:
        form = await self.posted(request)
        if isinstance(form, Response):
            return form
        user_id = request.path_params["user_id"]
        url = request.url_for("user", user_id=user_id).path
        action = form.get("action", "")
        if form.get("confirmed") != "yes" or action not in USER_ACTIONS:
            return self.back(url, "Nothing done: the action was not confirmed.")
        from starlette.concurrency import run_in_threadpool

        message = await run_in_threadpool(self._do, user_id, action, access.who(request))
        return self.back(url, message)

    def _do(self, user_id: str, action: str, by: str) -> str:
        try:
            if action == "enable":
                return actions.enable(self.settings, self.store, user_id, by)
            if action == "disable":
                return actions.disable(self.store, user_id, by)
            kind = action.removeprefix("dry_").removeprefix("force_")
            return actions.run(self.settings, self.store, user_id, kind, by,
                               dry_run=action.startswith("dry_"),
                               force=action.startswith("force_"))
        except Exception as exc:  # one sentence on the page, never a traceback
            return health.sentence(exc)

    def new_user(self, request: Request) -> Response:
        return self.page(request, "new_user.html", fields=sorted(FILTERABLE_FIELDS), form={},
                         error="")

    async def add_user(self, request: Request) -> Response:
        form = await self.posted(request)
        if isinstance(form, Response):
            return form
        from starlette.concurrency import run_in_threadpool

        try:  # Graph and BC are asked: off the event loop
            message = await run_in_threadpool(actions.add_user, self.settings, self.store, form,
                                              access.who(request))
        except Exception as exc:  # one sentence on the form, never a traceback
            return self.page(request, "new_user.html", 400, fields=sorted(FILTERABLE_FIELDS),
                             form=form, error=health.sentence(exc))
        user_id = form.get("user_id", "").strip() or form.get("mailbox", "").strip()
        return self.back(request.url_for("user", user_id=user_id).path, message)

    def _edit_page(self, request: Request, setup: UserSetup, form: dict[str, str],
                   status: int = 200, error: str = "") -> Response:
        several = (actions.shown(setup.contact_filter)
                   if len(setup.contact_filter) > 1 else "")
        return self.page(request, "edit_user.html", status, user_id=setup.user_id, form=form,
                         fields=sorted(FILTERABLE_FIELDS), policies=list(OutlookDeletePolicy),
                         several_filters=several, error=error)

    def edit_user(self, request: Request) -> Response:
        setup = self.store.setups.get(request.path_params["user_id"])
        if setup is None:
            return self.page(request, "message.html", 404,
                             message="There is no such user: pick one from the Users page.")
        return self._edit_page(request, setup, actions.edit_form(setup))

    async def save_user(self, request: Request) -> Response:
        """The edit form: checked, then shown for confirmation, then applied and audited."""
        form = await self.posted(request)
        if isinstance(form, Response):
            return form
        setup = self.store.setups.get(request.path_params["user_id"])
        if setup is None:
            return self.page(request, "message.html", 404,
                             message="There is no such user: pick one from the Users page.")
        url = request.url_for("user", user_id=setup.user_id).path
        try:
            changes = actions.setup_changes(setup, form)
        except Exception as exc:  # one sentence (and the filter's caret) on the form
            return self._edit_page(request, setup, form, 400, health.sentence(exc))
        if not changes:
            return self.back(url, "Nothing changed: the setup already reads like that.")
        if form.get("confirmed") != "yes":
            return self.page(request, "edit_confirm.html", user_id=setup.user_id, form=form,
                             changes=actions.change_rows(setup, changes))
        from starlette.concurrency import run_in_threadpool

        try:  # BC counts a new filter: off the event loop
            message = await run_in_threadpool(actions.edit_user, self.settings, self.store,
                                              setup.user_id, changes, access.who(request))
        except Exception as exc:
            return self._edit_page(request, setup, form, 400, health.sentence(exc))
        return self.back(url, message)

    def filter_check(self, request: Request) -> Response:
        q = request.query_params
        problem = actions.filter_problem(q.get("field", ""), q.get("expression", ""))
        return PlainTextResponse(problem or "ok", status_code=200)

    def dead_letters(self, request: Request) -> Response:
        try:
            groups = health.bounded(lambda: actions.dead_letters(self.settings),
                                    "the Kafka broker")
            error = ""
        except Exception as exc:
            groups, error = [], health.sentence(exc)
        return self.page(request, "deadletters.html", groups=groups, error=error)

    async def replay(self, request: Request) -> Response:
        form = await self.posted(request)
        if isinstance(form, Response):
            return form
        url = request.url_for("dead_letters").path
        if form.get("confirmed") != "yes":
            return self.back(url, "Nothing replayed: the replay was not confirmed.")
        from starlette.concurrency import run_in_threadpool

        try:
            message = await run_in_threadpool(
                actions.replay, self.settings, self.store, access.who(request),
                reason=form.get("reason", ""), where=form.get("where", ""))
        except Exception as exc:
            message = health.sentence(exc)
        return self.back(url, message)

    def health(self, request: Request) -> Response:
        return self.page(request, "health.html", checks=health.checks(self.settings, self.store,
                                                                 self.backlog))


def create_console_app(settings: Settings, store: Store,
                       results: views.ResultsView | None = None,
                       sign_in: SignInSettings | None = None) -> Starlette:
    """The console; with `sign_in` configured every page and action needs an Entra ID session."""
    c = Console(settings, store, results)
    routes = [
        Route("/", lambda _: RedirectResponse("/users", status_code=307)),
        Route("/users", c.users, name="users"),
        Route("/users/new", c.new_user, name="new_user"),
        Route("/users", c.add_user, methods=["POST"], name="add_user"),
        Route("/users/{user_id}", c.user, name="user"),
        Route("/users/{user_id}/edit", c.edit_user, name="edit_user"),
        Route("/users/{user_id}/edit", c.save_user, methods=["POST"], name="save_user"),
        Route("/users/{user_id}/confirm", c.confirm, name="confirm"),
        Route("/users/{user_id}/act", c.act, methods=["POST"], name="act"),
        Route("/filter-check", c.filter_check, name="filter_check"),
        Route("/deadletters", c.dead_letters, name="dead_letters"),
        Route("/deadletters/replay", c.replay, methods=["POST"], name="replay"),
        Route("/health", c.health, name="health"),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    if sign_in is None or not sign_in.configured:
        return Starlette(routes=routes)
    flow = SignIn(sign_in)

    async def signout(request: Request) -> Response:
        form = await c.posted(request)
        return form if isinstance(form, Response) else flow.signout()

    routes += [Route("/signin", flow.start, name="signin"),
               Route("/auth/callback", flow.callback, name="callback"),
               Route("/signout", signout, methods=["POST"], name="signout")]
    return Starlette(routes=routes, middleware=[Middleware(RequireSignIn, signin=flow)])
