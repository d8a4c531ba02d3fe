"""The bottom layer every other uses: process groups (`distributed`), logging (`logs`), random streams
(`rng`) and autocast (`autocast`)."""
