"""What crosses a Temporal boundary: workflow and activity inputs and outputs, signal, query and
activity names, workflow ids and search attributes, statuses. Imported by the workflows, the
activities and the service alike; it imports none of them."""
