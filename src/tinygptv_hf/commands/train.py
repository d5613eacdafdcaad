"""`tinygptv train RECIPE.yaml`: one stage, as declared by a recipe (see `tinygptv_hf.trainers.recipe`)."""


def add_parser(subparsers):
    parser = subparsers.add_parser("train", help="train one stage from a recipe YAML")
    parser.add_argument("recipe", help="recipe YAML (TrainingArguments plus stage, model and data sections)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="value for ${NAME} in the recipe"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        help="continue from the newest complete (or the given) checkpoint",
    )
    parser.set_defaults(run=run)


def parse_variables(pairs: list[str]) -> dict[str, str]:
    variables = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            raise ValueError(f"--set expects NAME=VALUE, got {pair!r}")
        variables[name] = value
    return variables


def run(args):
    from ..cards import recipe_card
    from ..trainers.recipe import Recipe, run_recipe

    recipe = Recipe.load(args.recipe, parse_variables(args.set))
    result = run_recipe(recipe, resume=args.resume)
    if not result.main_process:
        return
    recipe_card(recipe, result.final).save(result.final / "README.md")
    if recipe.push:
        from ..publishing import push_stage

        push_stage(
            result.final,
            recipe.push["repo"],
            recipe.stage,
            update_main=bool(recipe.push.get("update_main", False)),
        )
    print(f"stage {recipe.stage} finished: {result.summary()}")
