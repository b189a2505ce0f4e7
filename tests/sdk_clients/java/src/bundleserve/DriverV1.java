package bundleserve;

import com.amazonaws.ClientConfiguration;
import com.amazonaws.auth.AWSStaticCredentialsProvider;
import com.amazonaws.auth.AnonymousAWSCredentials;
import com.amazonaws.auth.BasicAWSCredentials;
import com.amazonaws.client.builder.AwsClientBuilder;
import com.amazonaws.services.sagemakerruntime.AmazonSageMakerRuntime;
import com.amazonaws.services.sagemakerruntime.AmazonSageMakerRuntimeClientBuilder;
import com.amazonaws.services.sagemakerruntime.model.AmazonSageMakerRuntimeException;
import com.amazonaws.services.sagemakerruntime.model.InvokeEndpointAsyncRequest;
import com.amazonaws.services.sagemakerruntime.model.InvokeEndpointAsyncResult;
import com.amazonaws.services.sagemakerruntime.model.InvokeEndpointRequest;
import com.amazonaws.services.sagemakerruntime.model.InvokeEndpointResult;
import com.amazonaws.services.sagemakerruntime.model.ModelErrorException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Map;

/**
 * The unmodified AWS SDK for Java v1 (`AmazonSageMakerRuntime`): ops `invoke` and `invoke_async` (v1 has no
 * InvokeEndpointWithResponseStream, and its InvokeEndpointAsync takes an InputLocation only).
 */
public final class DriverV1 {
    private DriverV1() {}

    public static void main(String[] argv) {
        Map<String, String> args = Wire.arguments(argv);
        AmazonSageMakerRuntime client = AmazonSageMakerRuntimeClientBuilder.standard()
                .withEndpointConfiguration(new AwsClientBuilder.EndpointConfiguration(args.get("url"), args.get("region")))
                .withCredentials(new AWSStaticCredentialsProvider(
                        args.containsKey("access_key")
                                ? new BasicAWSCredentials(args.get("access_key"), args.get("secret_key"))
                                : new AnonymousAWSCredentials()))
                .withClientConfiguration(new ClientConfiguration().withMaxErrorRetry(0))
                .build();
        Map<String, Object> answer;
        try {
            answer = run(argv.length > 0 ? argv[0] : "", args, client);
        } catch (AmazonSageMakerRuntimeException error) {
            Integer original = error instanceof ModelErrorException model ? model.getOriginalStatusCode() : null;
            answer = Wire.serviceError(error, error.getErrorCode(), error.getStatusCode(), error.getErrorMessage(), original);
        } finally {
            client.shutdown();
        }
        Wire.print(answer);
    }

    private static Map<String, Object> run(String op, Map<String, String> args, AmazonSageMakerRuntime client) {
        Map<String, Object> answer = Wire.object();
        switch (op) {
            case "invoke" -> {
                InvokeEndpointRequest request = new InvokeEndpointRequest()
                        .withEndpointName(args.get("endpoint"))
                        .withBody(ByteBuffer.wrap(args.getOrDefault("body", "").getBytes(StandardCharsets.UTF_8)))
                        .withContentType(args.get("content_type"))
                        .withAccept(args.get("accept"))
                        .withCustomAttributes(args.get("custom_attributes"))
                        .withInferenceId(args.get("inference_id"))
                        .withTargetVariant(args.get("target_variant"));
                InvokeEndpointResult result = client.invokeEndpoint(request);
                answer.put("body", StandardCharsets.UTF_8.decode(result.getBody()).toString());
                answer.put("content_type", result.getContentType());
                answer.put("custom_attributes", result.getCustomAttributes());
                answer.put("invoked_variant", result.getInvokedProductionVariant());
            }
            case "invoke_async" -> {
                InvokeEndpointAsyncRequest request = new InvokeEndpointAsyncRequest()
                        .withEndpointName(args.get("endpoint"))
                        .withInputLocation(args.get("input_location"))
                        .withContentType(args.get("content_type"))
                        .withCustomAttributes(args.get("custom_attributes"))
                        .withInferenceId(args.get("inference_id"));
                InvokeEndpointAsyncResult result = client.invokeEndpointAsync(request);
                answer.put("inference_id", result.getInferenceId());
                answer.put("output_location", result.getOutputLocation());
                answer.put("failure_location", result.getFailureLocation());
            }
            default -> {
                answer.put("error", "UsageError");
                answer.put("message", "unknown op " + op);
            }
        }
        return answer;
    }
}
