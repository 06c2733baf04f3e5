"""Train tab: pick a subject and a recipe, adjust settings (generated from their declarations), queue a job."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import gradio as gr

from studio.config import config_to_dict, load_config, recipe_description, recipe_names
from studio.errors import StudioError
from studio.jobs import submit_train
from studio.jobs.catalog import base_model_choices
from studio.jobs.estimates import estimate_text
from studio.memory_plan import check_before_training, plan_markdown
from webui.context import Context
from webui.messages import browser_text, for_browser
from webui.widgets import SettingWidgets, collect, setting_widgets, value_updates, visibility_updates

DEFAULT_RECIPE = "tiny-lora"
ESTIMATE_INPUTS = ("steps", "base", "method", "resolution", "batch_size")  # what the time estimate depends on
# what the memory plan depends on (studio/memory_plan.py)
PLAN_INPUTS = ("base", "method", "resolution", "batch_size", "gradient_checkpointing", "mixed_precision", "frozen_weights_dtype",
               "base_quantization", "optimizer", "lora_rank", "train_text_encoder", "prior_preservation", "cache_text_embeddings",
               "cache_latents", "adapter_type", "blocks_to_swap", "offload_activations", "sample_every", "validation")
NO_RECIPE = "(defaults)"


@dataclass
class TrainTab:
    subject: gr.Dropdown
    start: gr.Button
    status: gr.Markdown
    job_id: gr.Number  # the job just queued (hidden), for the Jobs tab to select
    settings: SettingWidgets


def subject_choices(ctx: Context) -> list[str]:
    return [path.name for path in ctx.ws.subjects()]


def _recipe_values(recipe: str | None) -> dict:
    return config_to_dict(load_config(None if recipe in (None, "", NO_RECIPE) else recipe))


def _memory_text(values: dict) -> str:
    try:
        return plan_markdown(load_config(None, values))
    except (StudioError, TypeError, ValueError):
        return ""


def build(ctx: Context) -> TrainTab:
    recipes = recipe_names()
    initial_recipe = DEFAULT_RECIPE if DEFAULT_RECIPE in recipes else NO_RECIPE
    values = _recipe_values(initial_recipe)
    with gr.Row():
        subjects = subject_choices(ctx)
        subject = gr.Dropdown(subjects, value=subjects[0] if subjects else None, label="Subject",
                              elem_id="train-subject", info="Created in the Subject tab.", allow_custom_value=True)
        refresh = gr.Button("↻", elem_id="train-refresh", scale=0, min_width=40)
        recipe = gr.Dropdown([NO_RECIPE, *recipes], value=initial_recipe, label="Recipe", elem_id="train-recipe",
                             info="Starting values for every setting below.")
        name = gr.Textbox("", label="Job name", placeholder="(the subject's name)", elem_id="train-name")
    recipe_info = gr.Markdown(recipe_description(initial_recipe) if initial_recipe != NO_RECIPE else "",
                              elem_id="train-recipe-info")
    settings = setting_widgets(values, dynamic_choices={"base": base_model_choices()}, method=values["method"])
    time_estimate = gr.Markdown(estimate_text(ctx.ws, values, int(values["steps"])), elem_id="train-estimate")
    memory = gr.Markdown(_memory_text(values), elem_id="train-memory-plan")
    start = gr.Button("Start training", variant="primary", elem_id="train-start")
    status = gr.Markdown(elem_id="train-status")
    job_id = gr.Number(visible=False, precision=0, elem_id="train-job-id")

    def on_recipe(recipe):
        try:
            values = _recipe_values(recipe)
            description = recipe_description(recipe) if recipe != NO_RECIPE else ""
        except StudioError as error:
            gr.Warning(browser_text(error))
            return [gr.skip()] * (1 + len(settings.fields))
        return [description, *value_updates(settings, values)]

    def on_method(method):
        return visibility_updates(settings, method)

    def on_start(subject, recipe, name, *widget_values):
        """Queue a training job; API callers may pass any setting by name (e.g. steps=30)."""
        try:
            if not subject:
                raise StudioError("Choose a subject first (create one in the Subject tab).")
            overrides = collect(settings, widget_values)
            config = load_config(None if recipe == NO_RECIPE else recipe, overrides)
            check_before_training(config)  # on a GPU: will it fit? (names the settings that would make it fit)
            job = submit_train(ctx.ws, config, subject, name=name or None, confined=True)
        except StudioError as error:
            return f"**Error:** {for_browser(error)}", None
        return f"**Queued** {job.label}: {config.method}, {config.steps} steps on {config.base}.", job.id

    def on_settings(*widget_values):
        values = collect(settings, widget_values)
        try:
            return estimate_text(ctx.ws, values, int(values.get("steps") or 0))
        except (TypeError, ValueError):
            return gr.skip()

    def on_plan(*widget_values):
        return _memory_text(collect(settings, widget_values))

    for setting in PLAN_INPUTS:
        if setting in settings.names:
            settings.widget(setting).change(on_plan, settings.widgets, memory, api_name=False, show_progress="hidden")
    for setting in ESTIMATE_INPUTS:
        settings.widget(setting).change(on_settings, settings.widgets, time_estimate, api_name=False,
                                     show_progress="hidden")
    refresh.click(lambda: gr.update(choices=subject_choices(ctx)), None, subject, api_name=False)
    subject.focus(lambda: gr.update(choices=subject_choices(ctx)), None, subject, api_name=False)
    recipe.change(on_recipe, recipe, [recipe_info, *settings.widgets], api_name=False)
    settings.widget("method").change(on_method, settings.widget("method"), settings.widgets, api_name=False)
    # Name the API parameters after the settings, so gradio_client callers can write steps=30.
    on_start.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("subject", "recipe", "name", *settings.names)]
    )
    start.click(on_start, [subject, recipe, name, *settings.widgets], [status, job_id], api_name="start_training")
    return TrainTab(subject, start, status, job_id, settings)
